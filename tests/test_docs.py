"""The README and config.ini say what the code does."""

from __future__ import annotations

import configparser
import json
import re
from pathlib import Path

from conftest import MAIN_HOSTS
from fabric import Connection

from synctasks.connection import apply_host_key_policy
from synctasks.constants import DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def test_readme_starts_with_the_two_setup_commands():
    first = blocks("sh")[0].strip().splitlines()
    assert [line.split("#")[0].strip() for line in first] == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    assert "scripts/test.sh" in (ROOT / ".ci/run").read_text()


def test_every_config_key_is_in_config_ini_and_documented():
    parser = configparser.ConfigParser(inline_comment_prefixes=(";",), interpolation=None)
    parser.read(ROOT / "config.ini")
    for section, keys in DEFAULTS.items():
        for key, default in keys.items():
            assert parser.get(section, key) == default, (section, key)
            assert f"`{key}`" in README, key


def test_readme_json_examples_parse():
    examples = blocks("json")
    assert len(examples) >= 3
    for example in examples:
        json.loads(example)


def test_readme_api_example_reloads_only_when_changed(project, server, sudo_rights, server_root, monkeypatch,
                                                      tmp_path):
    dest = server_root / "nginx-etc" / tmp_path.name
    dest.mkdir(parents=True)  # root's, like /etc/nginx
    code = blocks("python")[0].replace("/etc/nginx/nginx.conf", f"{dest}/nginx.conf")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    project.file("conf/nginx.conf", "worker_processes 2;\n")
    monkeypatch.chdir(project.root)
    known = server.write_known_hosts(tmp_path / "known_hosts")
    c = Connection(MAIN_HOSTS[0], user=server.user, port=server.port,
                   connect_kwargs={"password": server.password, "look_for_keys": False, "allow_agent": False})
    apply_host_key_policy(c, "strict", known)
    reloads = []
    monkeypatch.setattr(c, "sudo", lambda command, **kw: reloads.append(command))
    with c:
        namespace["deploy_nginx"](c)
        namespace["deploy_nginx"](c)
    assert (dest / "nginx.conf").read_text() == "worker_processes 2;\n"
    assert reloads == ["systemctl reload nginx"]
