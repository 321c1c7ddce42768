import copy
import re

import pytest
import yaml

from ftds import local
from ftds.config import ConfigError, describe_changes, load_config, parse_config

GOOD = {
    "mode": "passive",
    "key_file": "/etc/ftds/cluster.key",
    "replicas": [
        {"id": "S1", "host": "10.0.0.1", "port": 7001, "control_port": 7101},
        {"id": "S2", "host": "10.0.0.2", "port": 7001, "control_port": 7101},
        {"id": "S3", "host": "10.0.0.3", "port": 7001, "control_port": 7101},
    ],
    "gfd": {"host": "10.0.0.4", "port": 7200},
    "rm": {"host": "10.0.0.4", "port": 7201},
    "tunables": {"heartbeat_interval": 0.1, "heartbeat_misses": 3},
}


def with_change(path, value):
    data = copy.deepcopy(GOOD)
    target = data
    for part in path[:-1]:
        target = target[part]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


def test_good_config_parses():
    config = parse_config(GOOD)
    assert config.replica_ids == ["S1", "S2", "S3"]
    assert config.tunables.heartbeat_misses == 3
    assert config.replica("S2").host == "10.0.0.2"
    assert config.launcher == "ssh"
    assert config.rm_metrics_port == 0  # off unless asked for
    assert parse_config(with_change(("rm", "metrics_port"), 7202)).rm_metrics_port == 7202


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("replicas", 1, "port"), 70000, "cluster.yml: replicas[1].port: must be 1-65535"),
        (("replicas", 1, "port"), "7001", "cluster.yml: replicas[1].port: must be 1-65535"),
        (("replicas", 0, "control_port"), 0, "replicas[0].control_port: must be 1-65535"),
        (("replicas", 2, "id"), "S1", "replicas[2].id: duplicate replica id S1"),
        (("replicas", 2, "id"), "server3", "replicas[2].id: must look like S1, S2"),
        (("replicas", 1, "host"), "bad host!", "replicas[1].host: not an IP address"),
        (("replicas", 1, "colour"), "red", "replicas[1].colour: unknown field"),
        (("replicas", 1, "port"), KeyError, "replicas[1].port: is required"),
        (("replicas",), [], "replicas: must be a non-empty list"),
        (("mode",), "semi-active", "mode: must be one of passive, active"),
        (("replication",), "maybe", "replication: must be one of sync, async"),
        (("gfd", "port"), -1, "gfd.port: must be 1-65535"),
        (("rm",), KeyError, "rm: is required"),
        (("key_file",), KeyError, "key_file: is required"),
        (("tunables", "heartbeat_interval"), 0, "tunables.heartbeat_interval: must be between"),
        (("tunables", "heartbeat_misses"), 1.5, "tunables.heartbeat_misses: must be an integer"),
        (("tunables", "lease"), 0.05, "tunables.lease: must be longer than heartbeat_interval"),
        (("tunables", "hearbeat_interval"), 1, "tunables.hearbeat_interval: unknown field"),
        (("launcher",), {"kind": "telnet"}, "launcher.kind: must be one of local, ssh, none"),
        (("launcher",), {"ssh": {"command": "reboot"}}, "launcher.ssh.command: must contain {id}"),
        (("trace",), {"requests": "yes"}, "trace.requests: must be true or false"),
        (("rm", "metrics_port"), 70000, "rm.metrics_port: must be 1-65535"),
        (("rm", "metrics_port"), True, "rm.metrics_port: must be 1-65535"),
        (("rm", "metrics_port"), 7201, "rm.metrics_port: 10.0.0.4:7201 already used by rm.port"),
        (("rm", "metrics_port"), 7200, "rm.metrics_port: 10.0.0.4:7200 already used by gfd"),
        (("rm", "metrics_address"), "bad host!", "rm.metrics_address: not an IP address"),
        (("tunables", "hello_timeout"), 0, "tunables.hello_timeout: must be between"),
        (("tunables", "max_conns_per_source"), 0, "tunables.max_conns_per_source: must be 1-"),
        (("tunables", "fence_hung_primary"), 1, "tunables.fence_hung_primary: must be true or"),
        (("tunables", "fence_hung_primary"), "yes",
         "tunables.fence_hung_primary: must be true or false"),
        (("launcher",), {"ssh": {"command_timeout": 0}},
         "launcher.ssh.command_timeout: must be between"),
    ],
)
def test_each_bad_field_is_named(path, value, message):
    with pytest.raises(ConfigError) as err:
        parse_config(with_change(path, value))
    assert message in str(err.value)
    assert str(err.value).startswith("cluster.yml: ")


def test_same_address_twice_is_refused():
    data = with_change(("replicas", 1, "host"), "10.0.0.1")
    data["replicas"][1]["port"] = 7101
    with pytest.raises(ConfigError, match=r"replicas\[1\].port: 10.0.0.1:7101 already used"):
        parse_config(data)


def test_errors_name_the_file(tmp_path):
    path = tmp_path / "lab.yml"
    path.write_text(yaml.safe_dump(with_change(("replicas", 1, "port"), 0)))
    with pytest.raises(ConfigError, match=r"^lab.yml: replicas\[1\].port: must be 1-65535$"):
        load_config(path)


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "cluster.yml"
    path.write_text("replicas: [\n  {id: S1\n")
    with pytest.raises(ConfigError, match=r"cluster.yml: not valid YAML at line"):
        load_config(path)


@pytest.mark.parametrize("content, problem", [
    (("a: " + "[" * 5000 + "]" * 5000).encode(), "nested too deeply"),  # was a RecursionError
    (b"name: caf\xe9\n", "not UTF-8"),  # Latin-1 from an old editor: was a UnicodeDecodeError
    (b"tunables: {max_frame: " + b"9" * 5000 + b"}", "digits"),  # was a ValueError
])
def test_a_file_the_parser_cannot_take_is_a_config_error(tmp_path, content, problem):
    path = tmp_path / "cluster.yml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=rf"^cluster.yml: .*{problem}"):
        load_config(path)


def test_a_long_bad_value_is_named_short(tmp_path):
    """One line an operator can read, not the 5,000 characters they pasted by mistake."""
    path = local.write_cluster(tmp_path, 3, base=44900)
    data = yaml.safe_load(path.read_text())
    data["replicas"][1]["id"] = "S" * 5000
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "must look like S1" in str(caught.value) and len(str(caught.value)) < 200


def test_missing_file():
    with pytest.raises(ConfigError, match="cannot read"):
        load_config("/nonexistent/cluster.yml")


def test_describe_changes_lists_tunables_and_replicas():
    old = parse_config(GOOD)
    new_data = with_change(("tunables", "heartbeat_interval"), 0.25)
    new_data["replicas"] = new_data["replicas"][:2]
    changes = describe_changes(old, parse_config(new_data))
    assert "tunables.heartbeat_interval: 0.1 -> 0.25" in changes
    assert "replicas: S1,S2,S3 -> S1,S2" in changes


def test_fencing_is_off_unless_asked_and_a_change_reads_as_words():
    old = parse_config(GOOD)
    assert old.tunables.fence_hung_primary is False
    new = parse_config(with_change(("tunables", "fence_hung_primary"), True))
    assert new.tunables.fence_hung_primary is True
    assert "tunables.fence_hung_primary: false -> true" in describe_changes(old, new)


def test_strangers_and_metrics_settings(tmp_path):
    config = parse_config(GOOD)
    assert (config.tunables.hello_timeout, config.tunables.max_conns_per_port,
            config.tunables.max_conns_per_source) == (2.0, 1024, 256)
    assert (config.rm_metrics_address, config.rm_metrics_web_config) == ("", "")
    data = with_change(("rm", "metrics_address"), "0.0.0.0")
    data["rm"]["metrics_web_config"] = "metrics-web.yml"
    path = tmp_path / "cluster.yml"
    path.write_text(yaml.safe_dump(data))
    loaded = load_config(path)
    assert loaded.rm_metrics_address == "0.0.0.0"
    assert loaded.rm_metrics_web_config == str(tmp_path / "metrics-web.yml")  # beside the file


def test_a_tls_section_replaces_the_key_and_names_its_fields(tmp_path):
    data = copy.deepcopy(GOOD)
    del data["key_file"]
    with pytest.raises(ConfigError, match=r"key_file: is required \(or a tls section\)"):
        parse_config(data)
    data["tls"] = {"ca": "/etc/ftds/tls/ca.crt", "dir": "/etc/ftds/tls"}
    config = parse_config(data)
    assert config.tls is not None and config.tls.crl == ""
    assert config.tls.cert("S1") == "/etc/ftds/tls/S1.crt"
    assert config.read_key() == b""  # frames carry no MAC: TLS authenticates them
    for change, message in (({"dir": "/x"}, "tls.ca: is required"),
                            ({"ca": "a", "dir": "b", "certs": "c"}, "tls.certs: unknown field"),
                            ({"ca": "", "dir": "b"}, "tls.ca: must be a non-empty string"),
                            ("yes", "tls: must be a mapping")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_config({**data, "tls": change})
    # Relative paths are beside the cluster file, as the metrics web config's are.
    path = tmp_path / "cluster.yml"
    path.write_text(yaml.safe_dump({**data, "tls": {"ca": "pki/ca.crt", "dir": "tls",
                                                     "crl": "pki/ca.crl"}}))
    tls = load_config(path).tls
    assert tls is not None
    assert (tls.ca, tls.dir, tls.crl) == (str(tmp_path / "pki/ca.crt"), str(tmp_path / "tls"),
                                          str(tmp_path / "pki/ca.crl"))
