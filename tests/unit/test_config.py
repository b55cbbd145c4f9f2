"""Settings precedence (command line > environment > file > default) and the example file."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from llmtap.proxy.cli import main, serve
from llmtap.proxy.config import Settings, setting_fields

ROOT = Path(__file__).resolve().parents[2]


def resolved(args: list[str], env: dict[str, str] | None = None) -> dict[str, object]:
    result = CliRunner().invoke(main, ["serve", "--print-config", *args], env=env)
    assert result.exit_code == 0, result.output
    return orjson.loads(result.output)


def test_defaults_match_spec() -> None:
    got = resolved([])
    assert got["host"] == "127.0.0.1" and got["port"] == 8787
    assert got["upstream"] == "https://api.openai.com/v1"
    assert got["db"] == "./llmtap.db" and got["mode"] == "record"
    assert got["log_traces"] is True and got["log_models"] is False
    assert got["log_model_signatures"] is False and got["log_input_examples"] is False
    assert got["registered_model_name"] is None


def test_command_line_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('port = 1111\nmode = "auto"\ndb = "file.db"\nlog_models = true\n')
    from_file = resolved(["--config", str(config)])
    assert (from_file["port"], from_file["mode"], from_file["db"]) == (1111, "auto", "file.db")
    assert from_file["log_models"] is True
    env = {"LLMTAP_PORT": "2222", "LLMTAP_LOG_MODELS": "false"}
    from_env = resolved(["--config", str(config)], env)
    assert from_env["port"] == 2222 and from_env["log_models"] is False
    assert from_env["mode"] == "auto"  # the file still fills what env does not
    from_flag = resolved(["--config", str(config), "--port", "3333"], env)
    assert from_flag["port"] == 3333


def test_config_file_from_environment_and_unknown_keys(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('upstream = "http://localhost:11434/v1/"\n')
    assert resolved([], {"LLMTAP_CONFIG": str(config)})["upstream"] == "http://localhost:11434/v1"
    config.write_text("prot = 1\n")
    result = CliRunner().invoke(main, ["serve", "--print-config", "--config", str(config)])
    assert result.exit_code != 0 and "unknown option(s) prot" in result.output


def test_example_config_serve_options_and_settings_are_one_set() -> None:
    example = (ROOT / "config.example.toml").read_text()
    keys = set(tomllib.loads(example)) | set(re.findall(r"^# (\w+) = ", example, re.M))
    fields = {f.name for f in setting_fields()}
    options = {p.name for p in serve.params} - {"config", "print_config"}
    assert keys == fields == options
    # and the example's values are the defaults
    defaults = Settings()
    for name, value in tomllib.loads(example).items():
        assert getattr(defaults, name) == value, name


def test_bad_values_are_refused() -> None:
    result = CliRunner().invoke(main, ["serve", "--print-config", "--mode", "sideways"])
    assert result.exit_code != 0 and "sideways" in result.output
    with pytest.raises(ValueError):
        Settings(mode="sideways")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--log-models"], True),
        (["--log-models=true"], True),
        (["--log-models=1"], True),
        (["--log-models=yes"], True),
        (["--log-models", "--no-log-models"], False),
        (["--log-models=false"], False),
        (["--log-models=0"], False),
    ],
)
def test_capture_switches_take_a_value_or_none(args: list[str], expected: bool) -> None:
    """As flags, or with a value as MLflow's keyword arguments take one."""
    assert resolved(args)["log_models"] is expected


def test_a_switch_value_that_is_no_boolean_is_refused() -> None:
    result = CliRunner().invoke(main, ["serve", "--print-config", "--log-traces=maybe"])
    assert result.exit_code == 2 and "--log-traces" in result.output


@pytest.mark.parametrize(
    ("args", "env", "toml", "named"),
    [
        (["--replay-timing", "fast"], {}, None, "--replay-timing"),
        (["--port", "70000"], {}, None, "--port"),
        (["--port", "-1"], {}, None, "--port"),
        ([], {"LLMTAP_PORT": "65536"}, None, "--port"),
        (["--max-body-size", "-1"], {}, None, "--max-body-size"),
        (["--read-timeout", "0"], {}, None, "--read-timeout"),
        (["--read-timeout", "nan"], {}, None, "--read-timeout"),
        ([], {"LLMTAP_CONNECT_TIMEOUT": "nan"}, None, "--connect-timeout"),
        ([], {}, "port = 70000", "--port"),
        ([], {}, "log_traces = 0", "log_traces must be true or false"),
        ([], {}, "port = 9009.5", "port must be an integer"),
        ([], {}, "port = true", "port must be an integer"),
        ([], {}, 'upstream = ["a"]', "upstream must be a string"),
        (["--upstream", "127.0.0.1:8000/v1"], {}, None, "--upstream"),  # no scheme
        ([], {"LLMTAP_UPSTREAM": "ftp://host/v1"}, None, "--upstream"),
        ([], {}, 'upstream = "http://"', "upstream must be an http:// or https:// URL"),
        # `--db "$DB"` with DB unset, or :memory:: every recording went into a private
        # database gone at exit, and the banner printed an empty path
        (["--db", ""], {}, None, "--db"),
        (["--db", ":memory:"], {}, None, "--db"),
        ([], {"LLMTAP_DB": "/"}, None, "--db"),
        ([], {}, 'db = ""', "db must name a file"),
    ],
)
def test_bad_values_are_usage_errors_that_name_the_option(
    tmp_path: Path, args: list[str], env: dict[str, str], toml: str | None, named: str
) -> None:
    """Before: a traceback (ValueError from Settings, OverflowError from bind(), click's
    AttributeError on a TOML 0 for a switch), or silently taken (9009.5 as 9009, -1 bytes)."""
    if toml is not None:
        (tmp_path / "c.toml").write_text(toml + "\n")
        args = [*args, "--config", str(tmp_path / "c.toml")]
    result = CliRunner().invoke(main, ["serve", "--print-config", *args], env=env)
    assert result.exit_code == 2, result.output
    assert named in result.output and "Traceback" not in result.output


def test_settings_check_their_values() -> None:
    for bad in ({"port": 70000}, {"replay_timing": "fast"}, {"connect_timeout": 0.0}):
        with pytest.raises(ValueError):
            Settings(**bad)  # type: ignore[arg-type]
    assert Settings(port=0, replay_timing="2.5", max_body_size=1).port == 0
    assert resolved(["--replay-timing", "recorded", "--read-timeout", "0.5"])["read_timeout"] == 0.5


def test_an_empty_ignore_list_from_the_environment_is_empty(tmp_path: Path) -> None:
    """`LLMTAP_REPLAY_IGNORE_FIELDS=""` means "ignore no field", as `--replay-ignore-fields ""`
    and `[]` in the file do (click read it as unset, and the defaults stayed); above the file
    and below the flag, as the environment always is."""
    config = tmp_path / "llmtap.toml"
    config.write_text('replay_ignore_fields = ["seed"]\n')
    empty = {"LLMTAP_REPLAY_IGNORE_FIELDS": ""}
    assert resolved([], empty)["replay_ignore_fields"] == ""
    assert resolved(["--config", str(config)], empty)["replay_ignore_fields"] == ""
    flag = ["--replay-ignore-fields", "user"]
    assert resolved(flag, empty)["replay_ignore_fields"] == "user"
    assert resolved(["--config", str(config)])["replay_ignore_fields"] == "seed"


def test_print_config_shows_no_upstream_password() -> None:
    shown = resolved(["--upstream", "https://me:s3cret@gw.example/v1"])
    assert shown["upstream"] == "https://***@gw.example/v1"


def test_allowed_hosts_from_flag_environment_and_a_toml_list(tmp_path: Path) -> None:
    assert resolved([])["allowed_hosts"] == ""
    assert resolved(["--allowed-hosts", "a.example,b"])["allowed_hosts"] == "a.example,b"
    assert resolved([], {"LLMTAP_ALLOWED_HOSTS": "*"})["allowed_hosts"] == "*"
    config = tmp_path / "c.toml"
    config.write_text('allowed_hosts = ["llm.example.com", "Box"]\n')
    from_file = resolved(["--config", str(config)])["allowed_hosts"]
    assert Settings(allowed_hosts=from_file).allowed_host_names == ("llm.example.com", "box")


@pytest.mark.parametrize(
    "upstream", ["http://127.0.0.1:99999/v1", "http://[::1/v1", "https://api.openai.com:443x/v1"]
)
def test_an_upstream_no_request_could_reach_is_refused_at_start(upstream: str) -> None:
    """Before, llmtap started with its usual banner and answered every request with a 502."""
    with pytest.raises(ValueError, match="is not a URL llmtap can use"):
        Settings(upstream=upstream)
    result = CliRunner().invoke(main, ["serve", "--print-config", "--upstream", upstream])
    assert result.exit_code == 2 and "is not a URL llmtap can use" in result.output


def test_spaces_around_the_upstream_are_not_part_of_it(tmp_path: Path) -> None:
    """A trailing space (a config file, LLMTAP_UPSTREAM='... ') went into every forwarded path:
    POST /v1%20/chat/completions, a 404 from the upstream."""
    assert Settings(upstream="http://127.0.0.1:8000/v1 ").upstream == "http://127.0.0.1:8000/v1"
    env = {"LLMTAP_UPSTREAM": " http://127.0.0.1:8000/v1/ "}
    assert resolved([], env)["upstream"] == "http://127.0.0.1:8000/v1"
    config = tmp_path / "llmtap.toml"
    config.write_text('upstream = "http://127.0.0.1:8000/v1 "\n')
    assert resolved(["--config", str(config)])["upstream"] == "http://127.0.0.1:8000/v1"


def test_an_allowed_host_given_with_its_port_is_its_name() -> None:
    """A Host is compared without its port: `proxy.example.org:8443` never matched, nor did
    an IPv6 address written without brackets."""
    from llmtap.proxy.host_guard import HostGuard

    guard = HostGuard(Settings(allowed_hosts="Proxy.Example.org:8443, [fd00::6]:80, fd00::5"))
    assert guard.listed == {b"proxy.example.org", b"[fd00::6]", b"[fd00::5]"}
    for host in (b"proxy.example.org:8443", b"PROXY.example.org", b"[fd00::5]:8787"):
        assert guard.refusal([(b"host", host)]) is None, host
    assert guard.refusal([(b"host", b"evil.example")]) is not None
