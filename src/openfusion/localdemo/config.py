"""The openfusion config and `local` preset for a panel of local llama.cpp servers."""

from __future__ import annotations

import json
from pathlib import Path

from openfusion.localdemo.servers import MODEL_ALIAS, LlamaServer

# A 135M model has a small context and rambles: keep every inner call short.
MAX_COMPLETION_TOKENS = 200
ACTIVITY_FILE = "activity.sqlite3"


def provider_name(index: int) -> str:
    return f"local{index + 1}"


def write_config(servers: list[LlamaServer], directory: Path) -> tuple[Path, Path]:
    """Write `openfusion.toml` and `presets/local.toml` for these servers; return (config file, presets dir).

    The activity store is a SQLite file in `directory` too: demo traffic never mixes with a real server's.
    """
    directory.mkdir(parents=True, exist_ok=True)
    presets = directory / "presets"
    presets.mkdir(exist_ok=True)
    providers = []
    for index, server in enumerate(servers):
        providers.append(
            "[[providers]]\n"
            f'name = "{provider_name(index)}"\n'
            f'base_url = "{server.base_url}"\n'
            f'models = ["{provider_name(index)}/*"]\n'
            "strip_prefix = true\n"
            "# llama.cpp's server ignores max_completion_tokens, never reports usage in a stream and has\n"
            "# no reasoning parameter.\n"
            'max_tokens_field = "max_tokens"\n'
            "stream_usage = false\n"
            'reasoning_style = "none"\n'
        )
    config = directory / "openfusion.toml"
    # A TOML basic string is a JSON string (the same escapes), whatever the path holds.
    activity = f"[activity]\npath = {json.dumps(str(directory.resolve() / ACTIVITY_FILE))}\n"
    config.write_text('default_preset = "local"\n\n' + "\n".join([*providers, activity]), encoding="utf-8")
    slugs = [f"{provider_name(i)}/{MODEL_ALIAS}" for i in range(len(servers))]
    panel = ", ".join(f'"{slug}"' for slug in slugs)
    (presets / "local.toml").write_text(
        'name = "local"\n'
        f'description = "{len(slugs)} local llama.cpp servers running SmolLM2-135M: shows the mechanics, '
        'not the quality."\n'
        f"analysis_models = [{panel}]\n"
        f'model = "{slugs[0]}"\n'
        f'synthesis_model = "{slugs[1 % len(slugs)]}"\n'
        f"max_completion_tokens = {MAX_COMPLETION_TOKENS}\n"
        "temperature = 0.7\n"
        "tools = []\n",
        encoding="utf-8",
    )
    return config, presets
