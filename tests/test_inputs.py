"""Loading and validation of the input files: every bad input exits 2 with a
one-line message naming the file, before anything connects."""

from __future__ import annotations

import json
import os
import sys

import pytest

from synctasks import cli
from synctasks.errors import InputError
from synctasks.inputs import load_inventory, load_settings


@pytest.fixture
def good(tmp_path):
    """A valid project with one host (never contacted: every case fails before)."""
    (tmp_path / "hosts").mkdir()
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "a.txt").write_text("a")
    (tmp_path / "config.ini").write_text("")
    info = tmp_path / "connection_info.json"
    info.write_text(json.dumps([{"ip_address": "127.0.0.2", "user": "u", "passkey": "p"}]))
    info.chmod(0o600)
    (tmp_path / "hosts" / "127.0.0.2.json").write_text(json.dumps([{"src": "site", "dest": "/srv/site"}]))
    return tmp_path


def run(project, capsys, *args):
    capsys.readouterr()
    status = cli.main(["--config", str(project / "config.ini"), *args])
    out, err = capsys.readouterr()
    return status, out, err


BAD_CASES = {
    "malformed connection_info": (
        "connection_info.json", '[{"ip_address": "127.0.0.2",\n  "user" "u"}]',
        "connection_info.json:2:10: invalid JSON"),
    # Column 32 (the "]") up to Python 3.12, 31 (the trailing comma) from 3.13:
    # the message names where this Python's json parser stopped.
    "malformed mapper": ("hosts/127.0.0.2.json", '[{"src": "site", "dest": "/x"},]',
                         f"hosts/127.0.0.2.json:1:{32 if sys.version_info < (3, 13) else 31}: invalid JSON"),
    "not a list": ("connection_info.json", '{"ip_address": "127.0.0.2"}', "expected a JSON list of objects"),
    "empty hosts list": ("connection_info.json", "[]", "the list is empty"),
    "empty mapper list": ("hosts/127.0.0.2.json", "[]", "hosts/127.0.0.2.json: the list is empty"),
    "entry not an object": ("connection_info.json", '["127.0.0.2"]', "entry 1 is a str"),
    "missing ip_address": ("connection_info.json", '[{"user": "u"}]',
                           "connection_info.json entry 1: missing key 'ip_address'"),
    "wrong type port": ("connection_info.json", '[{"ip_address": "127.0.0.2", "port": "ssh"}]',
                        'entry 1: port "ssh" is not a number: write it as "port": 2222'),
    "port out of range": ("connection_info.json", '[{"ip_address": "127.0.0.2", "port": 70000}]',
                          "port 70000 is out of range"),
    "duplicate host": ("connection_info.json", '[{"ip_address": "127.0.0.2"}, {"ip_address": "127.0.0.2"}]',
                       "entry 2: duplicate host '127.0.0.2' (also entry 1)"),
    "missing dest": ("hosts/127.0.0.2.json", '[{"src": "site"}]', "hosts/127.0.0.2.json entry 1: missing key 'dest'"),
    "relative dest": ("hosts/127.0.0.2.json", '[{"src": "site", "dest": "srv/site"}]', "dest 'srv/site' is relative"),
    "dot-dot dest": ("hosts/127.0.0.2.json", '[{"src": "site", "dest": "/srv/../etc"}]', "contains '.' or '..'"),
    "newline dest": ("hosts/127.0.0.2.json", '[{"src": "site", "dest": "/srv/a\\nb"}]', "NUL or newline"),
    "nul dest": ("hosts/127.0.0.2.json", '[{"src": "site", "dest": "/srv/a\\u0000b"}]', "NUL or newline"),
    "missing src": ("hosts/127.0.0.2.json", '[{"src": "nope", "dest": "/srv/x"}]', "nope does not exist"),
    "duplicate dest": ("hosts/127.0.0.2.json",
                       '[{"src": "site", "dest": "/srv/x"}, {"src": "site/a.txt", "dest": "/srv/x"}]',
                       "entry 2: dest /srv/x is also the dest of entry 1"),
    "exclude not a list of strings": ("hosts/127.0.0.2.json", '[{"src": "site", "dest": "/s/x", "exclude": [1]}]',
                                      "'exclude' must be a list of strings"),
    "unknown config value": ("config.ini", "[sync]\nprotocol = ftp\n",
                             "[sync] protocol: unknown value 'ftp': did you mean sftp? use one of auto, scp, sftp"),
    "unknown config key": ("config.ini", "[sync]\nconections = 4\n",
                           "unknown key 'conections' in [sync]: did you mean 'connections'?"),
    "bad number": ("config.ini", "[sync]\nconnections = many\n", "'many' is not a whole number"),
    "unknown section": ("config.ini", "[synk]\n", "unknown section [synk]"),
    "malformed ini": ("config.ini", "connections = 4\n", "malformed config.ini"),
    "missing passkey_env": ("connection_info.json", '[{"ip_address": "127.0.0.2", "passkey_env": "NOPE_X_Y"}]',
                            "passkey_env names $NOPE_X_Y, which is not set"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_exits_2_naming_the_file(good, capsys, case):
    rel, content, expected = BAD_CASES[case]
    (good / rel).write_text(content)
    status, out, err = run(good, capsys)
    assert status == 2
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, err
    assert expected in lines[0]
    assert rel.split("/")[-1] in lines[0] or "config.ini" in lines[0]
    assert not (good / "logs" / "info.log").exists() or "sent" not in out


def test_missing_config_exits_2(tmp_path, capsys):
    status = cli.main(["--config", str(tmp_path / "nowhere" / "config.ini")])
    err = capsys.readouterr().err
    assert status == 2
    assert f"{tmp_path}/nowhere/config.ini: config.ini not found" in err


def test_empty_config_uses_defaults_and_resolves_against_its_folder(good, monkeypatch, tmp_path):
    monkeypatch.chdir("/")
    settings = load_settings(good / "config.ini", env={})
    assert settings.connections == 4 and settings.protocol == "auto" and settings.compare == "size-mtime"
    assert settings.retries == 3 and settings.connect_timeout == 10 and settings.host_key_policy == "strict"
    assert settings.connection_info == good / "connection_info.json"
    assert settings.info_log == good / "logs" / "info.log"
    assert settings.known_hosts == os.path.expanduser("~/.ssh/known_hosts") or str(settings.known_hosts).endswith(
        ".ssh/known_hosts")


def test_layers_cli_over_env_over_file(good):
    (good / "config.ini").write_text("[sync]\nconnections = 2\nretries = 1\n")
    env = {"SYNCTASKS_SYNC_CONNECTIONS": "5", "SYNCTASKS_SECURITY_HOST_KEY_POLICY": "accept-new"}
    settings = load_settings(good / "config.ini", {"sync.connections": 7, "sync.retries": None}, env)
    assert settings.connections == 7  # command line wins
    assert settings.retries == 1  # file (the flag was not given)
    assert settings.host_key_policy == "accept-new"  # environment
    settings = load_settings(good / "config.ini", None, env)
    assert settings.connections == 5


def test_config_env_variable_picks_the_file(good, monkeypatch, capsys):
    monkeypatch.setenv("SYNCTASKS_CONFIG", str(good / "config.ini"))
    monkeypatch.chdir("/")
    assert cli.main(["validate"]) == 0
    assert "inputs valid: 1 host(s), 1 mapping(s)" in capsys.readouterr().out


def test_trailing_slash_and_relative_src(good):
    (good / "hosts" / "127.0.0.2.json").write_text(json.dumps([
        {"src": "site", "dest": "/srv/"}, {"src": "site/a.txt", "dest": "/etc//app/"},
        {"src": "site/a.txt", "dest": "/etc/exact.txt"}]))
    inventory = load_inventory(good / "config.ini", env={})
    dests = [(m.dest, m.is_dir, m.src) for m in inventory.mappings["127.0.0.2"]]
    assert dests == [("/srv/site", True, good / "site"), ("/etc/app/a.txt", False, good / "site" / "a.txt"),
                     ("/etc/exact.txt", False, good / "site" / "a.txt")]


def test_host_without_mapper_is_listed_as_unmapped(good):
    info = good / "connection_info.json"
    info.write_text(json.dumps([{"ip_address": "127.0.0.2"}, {"ip_address": "127.0.0.3"}]))
    inventory = load_inventory(good / "config.ini", env={})
    assert list(inventory.mappings) == ["127.0.0.2"]
    assert inventory.unmapped == ["127.0.0.3"]
    assert [h.name for h in inventory.hosts] == ["127.0.0.2", "127.0.0.3"]  # still in the inventory
    assert any("no mapper file for host 127.0.0.3" in w for w in inventory.warnings)


def test_mapper_file_for_no_host_is_bad_input(good, capsys):
    # A typo'd address: hosts/127.0.0.20.json where the host is 127.0.0.2 (whose file is missing).
    (good / "hosts" / "127.0.0.2.json").rename(good / "hosts" / "127.0.0.20.json")
    status, out, err = run(good, capsys)
    assert status == 2
    assert ("error: hosts/127.0.0.20.json: no host '127.0.0.20' in connection_info.json: "
            "did you mean 127.0.0.2.json?") in err
    assert "allow_orphan_mapper_files" in err
    assert not (good / "logs" / "info.log").exists() or "syncing" not in (good / "logs" / "info.log").read_text()


def test_mapper_file_for_no_host_allowed_explicitly(good, capsys):
    (good / "hosts" / "10.9.9.9.json").write_text(json.dumps([{"src": "site", "dest": "/srv/x"}]))
    (good / "config.ini").write_text("[sync]\nallow_orphan_mapper_files = true\n")
    inventory = load_inventory(good / "config.ini", env={})
    assert list(inventory.mappings) == ["127.0.0.2"]
    assert any("10.9.9.9.json: no host '10.9.9.9'" in w and "ignored" in w for w in inventory.warnings)
    settings = load_settings(good / "config.ini", env={"SYNCTASKS_SYNC_ALLOW_ORPHAN_MAPPER_FILES": "false"})
    with pytest.raises(InputError, match="10.9.9.9.json: no host"):
        load_inventory(settings=settings, env={})


def test_world_readable_passwords_draw_a_warning(good):
    (good / "connection_info.json").chmod(0o644)
    inventory = load_inventory(good / "config.ini", env={})
    assert any("chmod 600" in w and "connection_info.json" in w for w in inventory.warnings)


def test_unknown_entry_key_unlike_any_is_warned_not_fatal(good):
    (good / "connection_info.json").write_text(json.dumps([{"ip_address": "127.0.0.2", "comment": "web"}]))
    (good / "hosts" / "127.0.0.2.json").write_text(json.dumps([{"src": "site", "dest": "/srv/x", "note": "y"}]))
    inventory = load_inventory(good / "config.ini", env={})
    assert any("unknown key 'comment' is ignored" in w for w in inventory.warnings)
    assert any("unknown key 'note' is ignored" in w for w in inventory.warnings)


@pytest.mark.parametrize("typo,meant", [("password", "passkey"), ("pasword", "passkey"), ("username", "user"),
                                        ("keyfile", "key_filename"), ("Port", "port"), ("ip", "ip_address")])
def test_misspelled_key_is_bad_input_with_the_key_meant(good, capsys, typo, meant):
    entry = {"ip_address": "127.0.0.2", "user": "u"}
    entry.pop(meant, None)
    entry[typo] = "22" if meant == "port" else ("127.0.0.2" if meant == "ip_address" else "x")
    (good / "connection_info.json").write_text(json.dumps([entry]))
    status, out, err = run(good, capsys)
    assert status == 2
    assert f"error: connection_info.json entry 1: unknown key '{typo}': did you mean '{meant}'? rename it" in err


def test_every_problem_of_every_file_in_one_run(good, capsys):
    (good / "connection_info.json").write_text(json.dumps([
        {"ip_address": "127.0.0.2", "user": "u", "password": "x"},
        {"ip_address": "127.0.0.3", "port": "ssh"},
        {"user": 5},
        {"ip_address": "127.0.0.2"},
    ]))
    (good / "hosts" / "127.0.0.2.json").write_text(json.dumps([
        {"src": "nope", "dest": "srv/relative"},
        {"src": "site", "dest": "/srv/a", "exlcude": ["*.tmp"]},
        {"src": "site/a.txt", "dest": "/srv/a"},
    ]))
    (good / "hosts" / "10.9.9.9.json").write_text("[]")  # not told while entry 3 has no name
    status, out, err = run(good, capsys)
    assert status == 2
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    expected = [
        "connection_info.json entry 1: unknown key 'password': did you mean 'passkey'?",
        "connection_info.json entry 2: port \"ssh\" is not a number",
        "connection_info.json entry 3: missing key 'ip_address'",
        "connection_info.json entry 3: 'user' must be a string, got int",
        "connection_info.json entry 4: duplicate host '127.0.0.2' (also entry 1)",
        # 127.0.0.2's entry has a problem; its mapper file is checked all the same
        "hosts/127.0.0.2.json entry 1: src",
        "hosts/127.0.0.2.json entry 1: dest 'srv/relative' is relative",
        "hosts/127.0.0.2.json entry 2: unknown key 'exlcude': did you mean 'exclude'?",
        "hosts/127.0.0.2.json entry 3: dest /srv/a is also the dest of entry 2",
    ]
    assert len(errors) == len(expected), errors
    for text, line in zip(expected, errors):
        assert text in line, errors
    assert "nope does not exist" in errors[5]

    (good / "connection_info.json").write_text(json.dumps([{"ip_address": "127.0.0.2", "user": "u"}]))
    status, out, err = run(good, capsys)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert status == 2 and len(errors) == 5, errors  # the mapper's four, and now the file for no host
    assert errors[4].startswith("error: hosts/10.9.9.9.json: no host '10.9.9.9' in connection_info.json")


def test_every_problem_of_config_ini_in_one_run(good, capsys):
    (good / "config.ini").write_text("[sync]\nconections = 4\nprotocol = ftp\nretries = -1\n"
                                     "[security]\nhost_key_policy = accept_new\n[loging]\n")
    status, out, err = run(good, capsys)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert status == 2 and len(errors) == 5, errors
    assert "unknown section [loging]: did you mean [logging]?" in err
    assert "unknown key 'conections' in [sync]: did you mean 'connections'?" in err
    assert "protocol: unknown value 'ftp'" in err and "retries: -1 is too small" in err
    assert "host_key_policy: unknown value 'accept_new': did you mean accept-new?" in err


@pytest.mark.parametrize("port", ["2600", " 2600 ", 2600])
def test_port_as_a_number_in_a_string_is_accepted(good, port):
    (good / "connection_info.json").write_text(json.dumps([{"ip_address": "127.0.0.2", "port": port}]))
    assert load_inventory(good / "config.ini", env={}).hosts[0].port == 2600


def test_api_dest_check_refuses_nested_and_duplicate_dests(good):
    from synctasks.inputs import Mapping, check_mapping_dests

    site = good / "site"
    ok = [Mapping(src=site, dest="/srv/a", is_dir=True), Mapping(src=site, dest="/srv/ab", is_dir=True)]
    check_mapping_dests(ok)
    nested = [Mapping(src=site, dest="/srv/a", is_dir=True), Mapping(src=site / "a.txt", dest="/srv/a/x",
                                                                        is_dir=False),
              Mapping(src=site, dest="/srv/a", is_dir=True)]
    with pytest.raises(InputError) as caught:
        check_mapping_dests(nested, "mapping")
    assert caught.value.problems == [
        "mapping 3: dest /srv/a is also the dest of mapping 1: give each mapping its own dest",
        "mapping 2: dest /srv/a/x is inside the dest of mapping 1 (/srv/a): put it in that entry's src instead, "
        "or pick separate dests",
    ]


def test_password_never_in_repr(good):
    inventory = load_inventory(good / "config.ini", env={})
    assert "'p'" not in repr(inventory.hosts[0]) and "password" not in repr(inventory.hosts[0])


def test_only_unknown_host_is_bad_input(good, capsys):
    status, out, err = run(good, capsys, "--only", "10.1.1.1")
    assert status == 2
    assert "--only 10.1.1.1: no such host" in err


def test_shallow_delete_refused_before_connecting(good, capsys):
    (good / "hosts" / "127.0.0.2.json").write_text(json.dumps([{"src": "site", "dest": "/srv"}]))
    status, out, err = run(good, capsys, "--delete")
    assert status == 2
    assert "refusing --delete on dest /srv" in err


def test_input_error_is_a_synctasks_error():
    from synctasks import SyncTasksError

    assert issubclass(InputError, SyncTasksError)
