#!/usr/bin/env python3
"""The agent image's own layers against its base: how many of its bytes are reused.

    .venv/bin/python -m bench.image_layers                    # claudecluster/agent:latest
    .venv/bin/python -m bench.image_layers --image my/agent:1 --base node:20

The base is the one the image was built on (its `claudecluster.base-image` label, which
scripts/build-images.sh sets: node:20, or the offline stand-in claudecluster/node-standin:bookworm)
unless `--base` names another. Its layers must be the first layers of the image (they are shared,
not copied: a host that has the base pulls only ours). From `docker history` (the SDK's
`image.history()`): the bytes of each layer of ours, the base's, and the share reused; the design
target is >= 90% reused. Also the CLI's own executable, which is most of what is ours.
Exit status 0 when the target is met.
"""

from __future__ import annotations

import argparse
import sys

import docker
from docker.errors import ImageNotFound
from docker.models.images import Image

TARGET = 0.90
BASE_LABEL = "claudecluster.base-image"
CLI_BINARY = "/usr/local/share/npm-global/lib/node_modules/@anthropic-ai/claude-code/bin/claude.exe"


def our_layers(image: Image, base: Image) -> list[dict]:
    """The image's history entries above the base's, newest first (empty ones included)."""
    layers, base_layers = image.attrs["RootFS"]["Layers"], base.attrs["RootFS"]["Layers"]
    if layers[: len(base_layers)] != base_layers:
        raise SystemExit(f"{base.tags[0]} is not the base of {image.tags[0]}: its layers differ")
    if len(layers) == len(base_layers):
        raise SystemExit(f"{image.tags[0]} has no layers of its own over {base.tags[0]}")
    history, base_history = image.history(), base.history()
    return history[: len(history) - len(base_history)]


def cli_bytes(client: docker.DockerClient, image: str) -> int:
    out = client.containers.run(
        image,
        ["stat", "-L", "-c", "%s", CLI_BINARY],
        entrypoint=[],
        network_mode="none",
        remove=True,
    )
    return int(out.decode())


def mb(size: int) -> str:
    return f"{size / 1e6:8.1f} MB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="claudecluster/agent:latest")
    parser.add_argument("--base", help=f"default: the image's {BASE_LABEL} label")
    args = parser.parse_args(argv)
    client = docker.from_env()
    try:
        image = client.images.get(args.image)
        base_name = args.base or (image.labels or {}).get(BASE_LABEL)
        if not base_name:
            parser.error(f"{args.image} has no {BASE_LABEL} label: name its base with --base")
        base = client.images.get(base_name)
    except ImageNotFound as exc:
        parser.error(f"no such image here: {exc.explanation}")
    ours = our_layers(image, base)
    own, reused = sum(layer["Size"] for layer in ours), base.attrs["Size"]
    share = reused / (reused + own)
    print(f"{args.image} on {base_name}")
    for layer in ours:
        if layer["Size"]:
            print(f"  ours {mb(layer['Size'])}  {layer['CreatedBy'][:90]}")
    cli = cli_bytes(client, args.image)
    print(f"ours     {mb(own)} in {sum(1 for la in ours if la['Size'])} layers")
    print(f"  of which the CLI's executable {mb(cli).strip()} ({cli / own:.1%} of ours)")
    print(f"reused   {mb(reused)} (the base's {len(base.history())} history entries)")
    print(f"image    {mb(image.attrs['Size'])}")
    print(f"bytes: ours {own} reused {reused} image {image.attrs['Size']}")
    print(f"reused {share:.1%} of the image's bytes (target >= {TARGET:.0%})")
    print(f"the target needs a base of at least {mb(own * TARGET / (1 - TARGET)).strip()}")
    return 0 if share >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
