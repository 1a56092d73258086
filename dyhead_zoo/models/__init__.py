"""Network modules: backbones, FPN, the DyHead tower, detection heads and the detector."""
