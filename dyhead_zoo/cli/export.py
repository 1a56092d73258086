"""``dyhead-zoo export``: the network as ONNX or a torch.export ExportedProgram."""
from __future__ import annotations

import argparse

from dyhead_zoo.cli.checks import add_model_argument, check_weights


def cmd_export(args: argparse.Namespace) -> int:
    """``dyhead-zoo export``: write the network as ONNX or a torch.export ExportedProgram."""
    from dyhead_zoo.export import export_model
    from dyhead_zoo.registry import create_model

    check_weights([args.model], {args.model: args.weights} if args.weights else {})
    model = create_model(args.model, pretrained=args.weights is None, weights=args.weights)
    path = export_model(model, args.output, args.format, height=args.height, width=args.width,
                        batch_size=args.batch_size, dynamic=args.dynamic)
    print(f"{args.model} ({args.format}, raw head outputs; see dyhead_zoo.export.decode) written to {path}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``export`` command."""

    ex = commands.add_parser("export", help="the network as ONNX or a torch.export ExportedProgram",
                             description="Export the network from the normalised, zero-padded batch (N, 3, H, W) "
                                         "to its raw head outputs; dyhead_zoo.export.decode turns them into "
                                         "the detections model.predict gives. ONNX uses the dynamo exporter at "
                                         "opset 19 with the deformable convs as the standard DeformConv op; "
                                         "the ExportedProgram keeps torchvision::deform_conv2d.")
    add_model_argument(ex)
    ex.add_argument("--weights", metavar="PATH", help="local checkpoint (.pth, .safetensors or a saved model "
                                                      "folder); default: the published weights")
    ex.add_argument("--format", choices=["onnx", "exported-program"], default="onnx",
                    help="onnx (a .onnx file) or exported-program (torch.export.save, a .pt2 file)")
    ex.add_argument("--height", type=int, metavar="H", help="padded input height, a multiple of the size "
                    "divisibility (default: an 800x1333 image's padded batch, e.g. 896x1408 at 128)")
    ex.add_argument("--width", type=int, metavar="W", help="padded input width (see --height)")
    ex.add_argument("--batch-size", type=int, default=1, metavar="N", help="images per batch (default 1)")
    ex.add_argument("--dynamic", action="store_true",
                    help="batch size, height and width as dynamic dimensions (one-stage variants; height and "
                         "width multiples of the size divisibility, at least twice it)")
    ex.add_argument("--output", required=True, metavar="FILE", help="the file to write")
    ex.set_defaults(func=cmd_export)
