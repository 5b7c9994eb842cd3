"""A wrong config file or preset: `openfusion serve` exits 2 with the file, each key, what is wrong and an example,
in the words of the rest of the errors (no pydantic internals, no traceback, no secret repeated)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

OPENFUSION = str(Path(sys.executable).parent / "openfusion")
PYDANTIC_NOISE = ("pydantic", "[type=", "input_value", "validation error", "Traceback", "For further information")


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OPENFUSION, "serve", "--port", "1", *args],
        capture_output=True, text=True, timeout=60, check=False, env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_a_wrong_config_file_names_the_file_each_key_the_problem_and_an_example(tmp_path: Path) -> None:
    config = tmp_path / "openfusion.toml"
    config.write_text(
        'max_body_bytes = "lots"\nadmin_keys = 12345678901234567\n[retry]\nmax_attempts = 0\n'
        '[[providers]]\nname = "corp"\nbase_url = "http://corp"\nmodelz = ["corp/*"]\n'
    )
    result = serve("--config", str(config))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0] == f"openfusion: invalid configuration in {config}:"
    assert set(lines[1:]) == {
        '  [[providers]] #1 models: is required; e.g. models = ["openai/*", "anthropic/*"]',
        "  [[providers]] #1 modelz: is not a setting here: did you mean models?",
        "  max_body_bytes (or OPENFUSION_MAX_BODY_BYTES): should be a valid integer, unable to parse string as an "
        'integer (got "lots"); e.g. max_body_bytes = 10485760 (the default)',
        "  admin_keys (or OPENFUSION_ADMIN_KEYS): should be a valid string",
        "  [retry] max_attempts (or OPENFUSION_RETRY__MAX_ATTEMPTS): should be greater than or equal to 1 (got 0); "
        "e.g. max_attempts = 3 (the default)",
    }, result.stderr
    assert "12345678901234567" not in result.stderr  # a key's value is never repeated
    assert not [noise for noise in PYDANTIC_NOISE if noise in result.stderr]


def test_a_wrong_preset_names_its_file_and_keys(tmp_path: Path) -> None:
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "team.toml").write_text('analysis_models = "openai/gpt-5"\nmodel = "openai/gpt-5"\ntemprature = 0.3\n')
    config = tmp_path / "openfusion.toml"
    config.write_text('default_preset = "quality"\n')
    result = serve("--config", str(config), "--presets", str(presets))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"openfusion: preset {presets / 'team.toml'} is invalid:",
        '  analysis_models: should be a valid list (got "openai/gpt-5"); e.g. analysis_models = '
        '["openai/gpt-5", "anthropic/claude-sonnet-4.5"]',
        "  temprature: is not a setting here: did you mean temperature?",
    ]


def test_a_list_or_table_in_the_environment_that_is_not_json_names_its_variable(tmp_path: Path) -> None:
    """pydantic-settings reads such a value as JSON and fails with an error of its own: still one message, no
    traceback, the variable named and its value (perhaps a secret) not repeated."""
    config = tmp_path / "openfusion.toml"
    config.write_text("builtin_providers = false\n")
    for variable, value in (
        ("OPENFUSION_CORS__ALLOW_ORIGINS", "https://ui.example.org"),
        ("OPENFUSION_PROVIDERS", "corp-secret-7d2e4f9a"),
    ):
        result = serve("--config", str(config), env={variable: value})
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"openfusion: invalid configuration in the environment: {variable}: a list or "
                                        "table must be written as JSON, e.g. "), result.stderr  # fmt: skip
        assert "Traceback" not in result.stderr and "SettingsError" not in result.stderr
        assert value not in result.stderr


def test_a_key_of_several_types_gets_one_line_in_its_own_name(tmp_path: Path) -> None:
    """`workers` is a number or "auto", a preset's tool a name or a table: one line naming the key and both
    types, not one per pydantic union member (`workers constrained-int`, `literal['auto']`)."""
    config = tmp_path / "openfusion.toml"
    config.write_text('workers = "many"\n')
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "team.toml").write_text('analysis_models = ["a/b"]\nmodel = "a/b"\ntools = [7]\n')
    result = serve("--config", str(config))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"openfusion: invalid configuration in {config}:",
        "  workers (or OPENFUSION_WORKERS): should be a valid integer, unable to parse string as an integer (got "
        '"many"); or should be \'auto\' (got "many"); e.g. workers = 1 (the default)',
    ]
    config.write_text("")
    result = serve("--config", str(config), "--presets", str(presets))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"openfusion: preset {presets / 'team.toml'} is invalid:",
        "  tools item #1: should be a valid string (got 7); or should be a valid dictionary (got 7)",
    ]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_beyond_65535_is_a_usage_error_not_another_port(workers: str, tmp_path: Path) -> None:
    """`--port 70000` used to serve on 4464 (70000 mod 65536) while saying 70000, or, with several workers, end
    in an OverflowError traceback."""
    config = tmp_path / "openfusion.toml"
    config.write_text("builtin_providers = false\n[activity]\nenabled = false\n")
    result = subprocess.run(
        [OPENFUSION, "serve", "--config", str(config), "--workers", workers, "--port", "70000"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "argument --port: expected a port number from 0 to 65535, not '70000'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_activity_store_that_cannot_be_opened_is_one_line_not_a_traceback(workers: str, tmp_path: Path) -> None:
    """The store opens as the server starts (in each worker): it still says what is wrong in one line and exits 3."""
    occupied = tmp_path / "a-file"
    occupied.write_text("not a directory")
    config = tmp_path / "openfusion.toml"
    config.write_text(f'builtin_providers = false\n[activity]\npath = "{occupied}/activity.sqlite3"\n')
    result = serve("--config", str(config), "--workers", workers, "--port", "0", "--log-format", "text")
    assert result.returncode == 3, result.stderr
    assert f"cannot start: cannot open the activity database {occupied}/activity.sqlite3" in result.stderr
    assert "Traceback" not in result.stderr and "StoreUnavailable" not in result.stderr


def test_a_misspelt_variable_is_told_not_silently_ignored(tmp_path: Path) -> None:
    """pydantic-settings ignores an OPENFUSION_* variable it does not know: OPENFUSION_API_KEY (for _KEYS) would leave
    the server open without a word. A near miss is a WARNING naming the setting; other variables are no mistake."""
    config = tmp_path / "openfusion.toml"
    config.write_text("builtin_providers = false\n[activity]\nenabled = false\n")
    env = {"OPENFUSION_API_KEY": "sk-client-7d2e4f9a1b3c", "OPENFUSION_DEFUALT_PRESET": "budget"}
    env["OPENFUSION_PORT"] = "80"  # the container image's own variable: not one of the settings, and no typo of one
    with socket.socket() as busy:  # the server stops right after start-up's checks
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = serve("--config", str(config), "--port", str(busy.getsockname()[1]), "--log-format", "text", env=env)
    assert result.returncode == 1, result.stderr
    warnings = [line.split("openfusion: ", 1)[1] for line in result.stderr.splitlines() if "is not a setting" in line]
    assert warnings == [
        "OPENFUSION_API_KEY is not a setting and is ignored: did you mean OPENFUSION_API_KEYS?",
        "OPENFUSION_DEFUALT_PRESET is not a setting and is ignored: did you mean OPENFUSION_DEFAULT_PRESET?",
    ]
    assert "sk-client-7d2e4f9a1b3c" not in result.stderr


def test_ctrl_c_while_starting_is_a_stop_not_a_traceback(tmp_path: Path) -> None:
    """SIGINT before the server handles signals (here: while it reads its config file, a FIFO nobody writes yet)
    exits 130 with one line, not a KeyboardInterrupt traceback."""
    config = tmp_path / "openfusion.toml"
    os.mkfifo(config)
    # As a terminal starts it: Ctrl-C not ignored (a background job of a script, as a test run may be, inherits it
    # ignored, and Python then never raises KeyboardInterrupt).
    process = subprocess.Popen(
        [OPENFUSION, "serve", "--port", "0", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:  # a FIFO opens for writing (without blocking) only once its reader has it open
            try:
                writer = os.open(config, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        time.sleep(0.2)  # from open() into read(), where it waits
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        os.close(writer)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pipe in (process.stdout, process.stderr):  # not left for the collector to close in another test
            if pipe is not None:
                pipe.close()
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "openfusion: interrupted" and "Traceback" not in stderr


# Installed as `sitecustomize` in a test's PYTHONPATH: the first import of a module beyond the standard library and the
# command's own (`openfusion.cli`, which the console script imports before calling main) says so on stderr and waits.
_STALL_IMPORTS = """
import sys, time

class _Stall:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if name not in ("openfusion", "openfusion.cli") and top not in sys.stdlib_module_names:
            sys.meta_path.remove(self)
            sys.stderr.write("importing " + name + "\\n")
            sys.stderr.flush()
            time.sleep(60)
        return None

sys.meta_path.insert(0, _Stall())
"""


def test_ctrl_c_while_importing_is_a_stop_not_a_traceback(tmp_path: Path) -> None:
    """SIGINT in the first second, while the command still imports its modules, exits 130 with one line as it does
    later in start-up, not with a KeyboardInterrupt traceback out of an import."""
    (tmp_path / "sitecustomize.py").write_text(_STALL_IMPORTS)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    process = subprocess.Popen(
        [OPENFUSION, "serve", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal starts it (see above)
    )  # fmt: skip
    try:
        assert process.stderr is not None
        first = process.stderr.readline()  # blocks until the stalled import says where it waits
        assert first.startswith("importing "), first
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["openfusion: interrupted"], stderr


def _start_up_checks(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`openfusion serve` on a port already taken: it runs every start-up check, then exits 1 without serving."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        return serve(*args, "--port", str(busy.getsockname()[1]), "--log-format", "text", env=env)


def test_a_preset_naming_a_model_no_provider_serves_stops_the_start(tmp_path: Path) -> None:
    """It used to be found only when a request used the preset (a 404 then); now the server does not start, and one
    line names the preset, the model, the providers configured and what would serve it."""
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "team.toml").write_text(
        'analysis_models = ["corp/big", "ollama/qwen3:8b", "openai/gpt-5"]\nmodel = "corp/big"\n'
        'judge_fallbacks = ["corp/small"]\n'
    )
    config = tmp_path / "openfusion.toml"
    config.write_text('[activity]\nenabled = false\n[[providers]]\nname = "corp"\nbase_url = "http://127.0.0.1:9/v1"\n'
                      'models = ["corp/big"]\n')  # fmt: skip
    result = _start_up_checks("--config", str(config), "--presets", str(presets))
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1:] == [
        f"openfusion: preset 'team' ({presets / 'team.toml'}) names models no configured provider serves: "
        "'openai/gpt-5', 'corp/small' (providers: corp, ollama). To serve 'openai/gpt-5', set OPENAI_API_KEY "
        "(built-in provider 'openai'), or set OPENROUTER_API_KEY (built-in provider 'openrouter'), or add a "
        "[[providers]] entry to the config file whose `models` patterns match it."
    ], result.stderr
    assert "Traceback" not in result.stderr

    (presets / "team.toml").write_text('analysis_models = ["corp/big", "ollama/qwen3:8b"]\nmodel = "corp/big"\n')
    result = _start_up_checks("--config", str(config), "--presets", str(presets))
    assert result.returncode == 1, result.stderr  # every check passed: only the port was taken


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_shipped_presets_start_with_only_an_openrouter_key(workers: str, tmp_path: Path) -> None:
    """OpenRouter serves any slug: every shipped preset passes the check, quietly (the README's first command)."""
    config = tmp_path / "openfusion.toml"
    config.write_text("[activity]\nenabled = false\n")
    result = _start_up_checks("--config", str(config), "--workers", workers, env={"OPENROUTER_API_KEY": "sk-or-x"})
    assert result.returncode == 1, result.stderr
    assert "preset" not in result.stderr and "serves" not in result.stderr, result.stderr


def test_shipped_presets_no_provider_serves_are_a_warning_not_a_stop(tmp_path: Path) -> None:
    """With only a direct key, the shipped presets' OpenRouter slugs have no provider: the server still starts (it
    may serve pass-through only), and one warning names the presets that cannot run and how to run them."""
    config = tmp_path / "openfusion.toml"
    config.write_text("[activity]\nenabled = false\n")
    result = _start_up_checks("--config", str(config), env={"OPENAI_API_KEY": "sk-test-only-openai"})
    assert result.returncode == 1, result.stderr
    warnings = [line.split("openfusion: ", 1)[1] for line in result.stderr.splitlines() if "shipped presets" in line]
    assert warnings == [
        "shipped presets budget, fast, quality, self name models no configured provider serves (providers: openai, "
        "ollama), e.g. '~google/gemini-flash-latest': fusion requests for them will fail; set OPENROUTER_API_KEY, "
        "or replace them with presets of your own of the same names (--presets)"
    ], result.stderr
