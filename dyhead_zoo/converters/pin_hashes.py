"""Download each variant's official and mirror weights and print the SHA-256 values to pin.

    dyhead-zoo pin-hashes --all
    dyhead-zoo pin-hashes dyhead_r50_atss_fpn_1x --roles official

Needs network. For every source of the chosen roles it fetches the file (into the usual
caches), checks that it holds exactly the variant's tensors, compares the mirror's tensors
with the official file's, and prints the ``[[weights.sources]]`` entries of
``dyhead_zoo/configs/<variant>.toml`` with ``sha256`` filled in (and, for Hub files, the commit that was
fetched as ``revision``). Pin a hash only after checking the report: once pinned, downloads
and conversions are verified against it and converted model cards may say "official".
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from dyhead_zoo.converters import script_main


def _resolved_revision(source, path: Path) -> str:
    # The Hugging Face cache keeps files under snapshots/<commit>/<filename>.
    parts = path.parts
    if "snapshots" in parts and len(parts) > parts.index("snapshots") + 1:
        return parts[parts.index("snapshots") + 1]
    return source.revision


def _toml_entry(source, sha256: str, revision: str) -> list[str]:
    lines = ["[[weights.sources]]", f'role = "{source.role}"']
    if source.url:
        lines.append(f'url = "{source.url}"')
    else:
        lines += [f'repo = "{source.repo}"', f'revision = "{revision}"', f'filename = "{source.filename}"']
    return lines + [f'sha256 = "{sha256}"']


def pin_hashes(names: Sequence[str], roles: Sequence[str] = ("official", "mirror"), progress: bool = True,
               out: TextIO | None = None) -> int:
    """Fetch, check and hash every source of ``roles`` of each variant in ``names``; print the
    TOML entries to pin with a comment per file saying what was found. Returns 0 when every
    file was fetched and holds its variant's tensors, else 1."""
    from dyhead_zoo.configs import get_config
    from dyhead_zoo.weights.checkpoint import file_sha256, find_mismatches, read_state_dict
    from dyhead_zoo.weights.fetch import WeightsDownloadError, expected_tensors, fetch_source

    out = out or sys.stdout
    configs = [get_config(name) for name in names]
    ok = True
    for config in configs:
        print(f"# dyhead_zoo/configs/{config.name}.toml", file=out)
        reference = None  # the official file's tensors, to compare the mirror's with
        for source in (s for s in config.weights.sources if s.role in roles):
            try:
                path = fetch_source(source, progress)
            except WeightsDownloadError as err:
                print(f"# {source.label}: NOT FETCHED ({err.reason})\n", file=out)
                ok = False
                continue
            sha256 = file_sha256(path)
            try:
                state = read_state_dict(path)
                verdict = find_mismatches(expected_tensors(config), state).first()
                verdict = f"DOES NOT MATCH the variant (first mismatching key: {verdict})" if verdict else \
                    f"holds the variant's {len(state)} tensors"
            except (OSError, ValueError) as err:
                state, verdict = None, f"NOT READABLE ({err})"
            if state is not None and "holds" in verdict and source.role == "official":
                reference = state
            elif state is not None and "holds" in verdict and reference is not None:
                differing = next((k for k in reference if not reference[k].equal(state[k].to(reference[k].dtype))),
                                 None)
                verdict += ("; same values as the official file" if differing is None
                            else f"; DIFFERS from the official file at {differing}")
            ok &= "holds" in verdict
            print(f"# {source.label}: {path.stat().st_size:,} bytes, {verdict}", file=out)
            print("\n".join(_toml_entry(source, sha256, _resolved_revision(source, path))) + "\n", file=out)
    return 0 if ok else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options, shared by ``dyhead-zoo pin-hashes`` and ``python -m``."""
    parser.add_argument("names", nargs="*", metavar="NAME", help="variants (default with --all: every one)")
    parser.add_argument("--all", action="store_true", help="every variant in the zoo")
    parser.add_argument("--roles", nargs="+", default=["official", "mirror"], choices=["project", "official", "mirror"],
                        help="which sources to hash (default: official mirror)")
    parser.add_argument("--no-progress", action="store_true", help="no download progress bars")


def run(args: argparse.Namespace) -> int:
    """Run :func:`pin_hashes` as ``args`` say."""
    from dyhead_zoo.configs import list_models

    names = list_models() if args.all else args.names
    if not names:
        raise ValueError("name the variants to hash, or pass --all")
    return pin_hashes(names, args.roles, not args.no_progress)


def main(argv: list[str] | None = None) -> int:
    return script_main("dyhead-zoo pin-hashes", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
