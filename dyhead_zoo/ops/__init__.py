"""Operators: the modulated deformable conv and its backends."""
