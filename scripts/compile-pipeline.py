"""Regenerate the committed pipeline package, pipelines/lightreasoner_pipeline.yaml (the default image, the
default timeouts, no model-cache PVC). tests/test_pipeline.py fails when the committed file differs from
a fresh compile by one byte. `lightreasoner pipeline compile` never writes here (it writes build/).

    python scripts/compile-pipeline.py
"""

from __future__ import annotations

import os

from lightreasoner.pipelines.lightreasoner_pipeline import COMPILED, compile_pipeline

from lightreasoner.images import DEFAULT_IMAGE


def main() -> None:
    os.environ.pop("LIGHTREASONER_IMAGE", None)  # the committed package names the default image
    print(compile_pipeline(COMPILED, image=DEFAULT_IMAGE))


if __name__ == "__main__":
    main()
