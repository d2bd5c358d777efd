"""Settings: TOML file < HILUM_* environment < command line; errors name the key.

Also the ``hilum ae`` commands, which keep remote AEs in the index (both backends).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port, run_hilum
from hilum.config import ConfigError, DuplicatePolicy, Settings, load_settings

GOOD_TOML = """
data_dir = "from-file"
log_level = "WARNING"

[dicom]
ae_title = "FILE_AE"
port = 4242
workers = 3
duplicate_policy = "replace"
allowed_calling_ae_titles = ["MODALITY1", "MODALITY2"]

[http]
port = 9000

[[remote_aes]]
name = "ws1"
ae_title = "WS1"
host = "10.0.0.5"
port = 104

[[remote_aes]]
name = "pacs-b"
ae_title = "PACSB"
host = "pacs.example.org"
port = 11112
description = "old archive"
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("HILUM_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "hilum.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_without_file() -> None:
    settings = load_settings(None)
    assert settings.dicom.ae_title == "HILUM"
    assert settings.dicom.port == 11112
    assert settings.http.port == 8042
    assert settings.remote_aes == []
    assert settings.config_file is None


def test_values_from_toml_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_TOML)
    settings = load_settings(path)
    assert settings.config_file == path
    assert settings.data_dir == Path("from-file")
    assert settings.log_level == "WARNING"
    assert settings.dicom.ae_title == "FILE_AE"
    assert settings.dicom.port == 4242
    assert settings.dicom.workers == 3
    assert settings.dicom.duplicate_policy is DuplicatePolicy.REPLACE
    assert settings.dicom.allowed_calling_ae_titles == ["MODALITY1", "MODALITY2"]
    assert settings.dicom.host == "0.0.0.0"  # not in the file: default
    assert settings.http.port == 9000
    assert [(r.name, r.ae_title, r.host, r.port) for r in settings.remote_aes] == [
        ("ws1", "WS1", "10.0.0.5", 104),
        ("pacs-b", "PACSB", "pacs.example.org", 11112),
    ]


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, GOOD_TOML)
    monkeypatch.setenv("HILUM_DICOM__PORT", "5555")
    monkeypatch.setenv("HILUM_DICOM__AE_TITLE", "ENV_AE")
    monkeypatch.setenv("HILUM_HTTP__HOST", "0.0.0.0")
    monkeypatch.setenv("HILUM_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("HILUM_DATABASE_URL", "postgresql+psycopg://u@db/hilum")
    settings = load_settings(path)
    assert settings.dicom.port == 5555
    assert settings.dicom.ae_title == "ENV_AE"
    assert settings.http.host == "0.0.0.0"
    assert settings.log_level == "DEBUG"
    assert settings.database_url == "postgresql+psycopg://u@db/hilum"
    # Nested keys the environment does not set still come from the file.
    assert settings.dicom.workers == 3
    assert settings.http.port == 9000
    assert settings.dicom.duplicate_policy is DuplicatePolicy.REPLACE
    # ... and without a file, the environment alone.
    assert load_settings(None).dicom.port == 5555


def test_command_line_overrides_environment_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, GOOD_TOML)
    monkeypatch.setenv("HILUM_DICOM__PORT", "5555")
    monkeypatch.setenv("HILUM_DICOM__AE_TITLE", "ENV_AE")
    settings = load_settings(
        path, data_dir=tmp_path / "cli", dicom={"port": 6666, "ae_title": None, "host": None}
    )
    assert settings.dicom.port == 6666  # command line
    assert settings.dicom.ae_title == "ENV_AE"  # None = not given: environment
    assert settings.dicom.workers == 3  # file
    assert settings.data_dir == tmp_path / "cli"


def test_cli_flags_override_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`hilum serve` flags beat HILUM_* (which still fill what no flag gives)."""
    from hilum import cli

    captured: dict[str, Settings] = {}

    def fake_settings(args: object, **overrides: object) -> Settings:
        settings = load_settings(getattr(args, "config", None), **overrides)
        captured["settings"] = settings
        raise SystemExit(0)

    monkeypatch.setenv("HILUM_DICOM__PORT", "5555")
    monkeypatch.setenv("HILUM_DICOM__WORKERS", "7")
    monkeypatch.setattr(cli, "_settings", fake_settings)
    with pytest.raises(SystemExit):
        cli.main(["serve", "--dicom-port", "7777", "--ae-title", "FLAG_AE"])
    settings = captured["settings"]
    assert settings.dicom.port == 7777
    assert settings.dicom.ae_title == "FLAG_AE"
    assert settings.dicom.workers == 7


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[dicom]\nport = 70000\n", "dicom.port"),
        ('[dicom]\nport = "eleven"\n', "dicom.port"),
        ("[http]\nport = -1\n", "http.port"),
        ('log_level = "LOUD"\n', "log_level"),
        ('[dicom]\nduplicate_policy = "maybe"\n', "dicom.duplicate_policy"),
        ("[dicom]\nworkers = 1000\n", "dicom.workers"),
        ('[[remote_aes]]\nname = "x"\nae_title = "X"\nhost = "h"\nport = 0\n', "remote_aes.0.port"),
    ],
)
def test_bad_value_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert key in str(info.value)
    assert str(path) in str(info.value)


def test_bad_environment_value_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HILUM_DICOM__PORT", "not-a-port")
    with pytest.raises(ConfigError, match=r"dicom\.port"):
        load_settings(None)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("colour = 1\n", "colour"),
        ("[dicom]\naet = 'X'\n", "dicom.aet"),
        ("[storage]\npath = '/x'\n", "storage"),
    ],
)
def test_unknown_key_rejected(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    assert key in str(info.value)
    assert "unknown key" in str(info.value)


@pytest.mark.parametrize(
    "title", ["THIS_TITLE_IS_TOO_LONG", "BAD\\\\AE", "   ", "TAB\\tAE", "ÄRZTE"]
)
def test_invalid_ae_title_rejected(tmp_path: Path, title: str) -> None:
    with pytest.raises(ConfigError, match=r"dicom\.ae_title"):
        load_settings(write(tmp_path, f'[dicom]\nae_title = "{title}"\n'))
    with pytest.raises(ConfigError, match=r"dicom\.allowed_calling_ae_titles"):
        load_settings(write(tmp_path, f'[dicom]\nallowed_calling_ae_titles = ["OK", "{title}"]\n'))
    with pytest.raises(ConfigError, match=r"remote_aes\.0\.ae_title"):
        load_settings(
            write(tmp_path, f'[[remote_aes]]\nname="a"\nae_title="{title}"\nhost="h"\nport=104\n')
        )


def test_ae_title_is_stripped(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, '[dicom]\nae_title = " PACS "\n')).dicom.ae_title == "PACS"


def test_missing_or_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    with pytest.raises(ConfigError):
        load_settings(write(tmp_path, "[dicom\nport = 1\n"))  # TOML syntax error


def hilum_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `hilum` expecting it to stop by itself; if `serve` starts instead, kill it all."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hilum.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the serve process and its workers
        proc.communicate()
        pytest.fail(f"hilum {' '.join(args)} did not stop: the bad configuration was accepted")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_serve_with_bad_config_stops_with_the_key(tmp_path: Path) -> None:
    bad = write(tmp_path, "[dicom]\nport = 70000\n", "bad.toml")
    port = str(free_port())
    result = hilum_cli(
        "serve", "--config", str(bad), "--data-dir", str(tmp_path / "d"), "--http-port", port
    )
    assert result.returncode != 0
    assert "dicom.port" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "d").exists()  # stopped before touching anything
    unknown = write(tmp_path, "[dicom]\nportt = 104\n", "unknown.toml")
    result = hilum_cli(
        "serve", "--config", str(unknown), "--data-dir", str(tmp_path / "d"), "--dicom-port", port
    )
    assert result.returncode != 0
    assert "dicom.portt" in result.stderr and "unknown key" in result.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("HILUM_")}
    env["HILUM_DICOM__AE_TITLE"] = "WAY_TOO_LONG_AE_TITLE"
    result = hilum_cli(
        "serve", "--data-dir", str(tmp_path / "d"), "--dicom-port", str(free_port()), env=env
    )
    assert result.returncode != 0
    assert "dicom.ae_title" in result.stderr


# -- `hilum ae` (index-backed: both backends) ------------------------------------------
def ae_rows(stdout: str) -> dict[str, list[str]]:
    """Parse the rich table of `hilum ae list` into name -> cells."""
    out: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if len(cells) >= 4 and cells[3].isdigit():
            out[cells[0]] = cells
    return out


def test_remote_aes_from_config_are_listed(settings: Settings, tmp_path: Path) -> None:
    config = write(tmp_path, GOOD_TOML.replace('data_dir = "from-file"\n', ""))
    listed = ae_rows(run_hilum(settings, "ae", "list", "--config", str(config)).stdout)
    assert listed["ws1"][1:4] == ["WS1", "10.0.0.5", "104"]
    assert listed["pacs-b"][1:4] == ["PACSB", "pacs.example.org", "11112"]
    assert listed["pacs-b"][4] == "old archive"
    assert listed["ws1"][4] == "from config"


def hilum_main(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    *args: str,
) -> tuple[int, str, str]:
    """`hilum ...` in-process (fast), against the fixture's data dir and index."""
    from hilum import cli

    if settings.database_url:
        monkeypatch.setenv("HILUM_DATABASE_URL", settings.database_url)
    try:
        code = cli.main([*args, "--data-dir", str(settings.data_dir)])
    except SystemExit as exc:  # argparse errors
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_ae_add_list_remove(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def hilum(*args: str) -> tuple[int, str, str]:
        return hilum_main(settings, monkeypatch, capsys, *args)

    assert hilum("ae", "add", "ct1", "CT_SCANNER", "192.0.2.10", "104",
                 "--description", "the CT")[0] == 0
    assert hilum("ae", "add", "viewer", "VIEWER", "localhost", "11113")[0] == 0
    # Listed by the real command line too.
    listed = ae_rows(run_hilum(settings, "ae", "list").stdout)
    assert set(listed) == {"ct1", "viewer"}
    assert listed["ct1"][1:5] == ["CT_SCANNER", "192.0.2.10", "104", "the CT"]

    # Duplicate name: refused, nothing changed.
    code, _, err = hilum("ae", "add", "ct1", "OTHER", "h", "104")
    assert code != 0
    assert "ct1" in err and "exists" in err
    # Bad port / AE title / name: refused with a message naming the problem.
    for args, word in (
        (("p", "AE", "h", "70000"), "port"),
        (("p", "AE", "h", "0"), "port"),
        (("p", "AE", "h", "eleven"), "port"),
        (("p", "WAY_TOO_LONG_AE_TITLE_X", "h", "104"), "AE title"),
        (("bad name!", "AE", "h", "104"), "name"),
    ):
        code, _, err = hilum("ae", "add", *args)
        assert code != 0, args
        assert word in err, (args, err)
        assert "errors.pydantic.dev" not in err
    code, out, _ = hilum("ae", "list")
    assert set(ae_rows(out)) == {"ct1", "viewer"}
    assert ae_rows(out)["ct1"][1] == "CT_SCANNER"

    assert hilum("ae", "remove", "ct1")[0] == 0
    assert set(ae_rows(hilum("ae", "list")[1])) == {"viewer"}
    code, _, err = hilum("ae", "remove", "ct1")
    assert code != 0
    assert "ct1" in err


def test_the_documented_example_file_loads_and_names_every_key() -> None:
    """docs/hilum.example.toml says it sets every key: keep it true and loadable."""
    import tomllib

    example = Path(__file__).resolve().parents[1] / "docs" / "hilum.example.toml"
    settings = load_settings(example)
    assert settings.dicom.ae_title
    data = tomllib.loads(example.read_text())
    for name, field in Settings.model_fields.items():
        if name == "config_file":
            continue
        assert name in data, f"{name} is missing from {example.name}"
        annotation = field.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            text = example.read_text()
            # Optional keys without a default value are shown commented out: "# key = ...".
            missing = {k for k in set(annotation.model_fields) - set(data[name]) if f"# {k} =" not in text}
            assert not missing, f"[{name}] keys missing from {example.name}: {sorted(missing)}"
