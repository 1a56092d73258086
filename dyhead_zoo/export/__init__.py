"""Exporting the detectors: ONNX (standard ``DeformConv``) and ``torch.export``, plus the Python
post-processing that turns the exported network's raw outputs into detections."""
from dyhead_zoo.export.decode import postprocess, prepare_batch
from dyhead_zoo.export.exporters import ONNX_OPSET, export_model, export_onnx, export_program, torchvision_deform_conv
from dyhead_zoo.export.network import ExportableNetwork, input_names, output_names

__all__ = ["ONNX_OPSET", "ExportableNetwork", "export_model", "export_onnx", "export_program", "input_names",
           "output_names", "postprocess", "prepare_batch", "torchvision_deform_conv"]
