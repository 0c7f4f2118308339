"""The command line and configuration errors (SPEC §2, §4): -t, error
positions, exit statuses, start-up failures."""

import json
import os
import re
import socket

import lib
from lib import check

# FILE:LINE:COL: json.path: message (a JSON syntax error may have no path)
ERR_RE = re.compile(r"(\S+?):(\d+):(\d+):(?: ([\w.\[\]]+):)? (.+)$")


def _good(port=None, up="127.0.0.1:9"):
    return lib.config([lib.listener("front", port or lib.free_port(), "web")],
                      [lib.upstream("web", [{"address": up, "weight": 2}], retries=1),
                       lib.upstream("api", [up])], workers=1)


def _line_of(text, marker, nth=1):
    """1-based line of the nth line containing marker."""
    seen = 0
    for i, l in enumerate(text.splitlines(), 1):
        if marker in l:
            seen += 1
            if seen == nth:
                return i
    raise AssertionError("marker %r not in generated file" % marker)


def _bad_cases():
    """(name, file text, [(path prefix, acceptable lines)]) for each error class."""
    cases = []

    def add(name, conf, expect, text_edit=None):
        text = json.dumps(conf, indent=2) + "\n"
        if text_edit:
            text = text_edit(text)
        cases.append((name, text, [(path, [_line_of(text, mk[0], mk[1]) + (mk[2] if len(mk) > 2 else 0)
                                            for mk in markers])
                                   for path, markers in expect]))

    c = _good()
    c["wokers"] = 2
    add("unknown_key", c, [("wokers", [('"wokers"', 1)])])

    c = _good()
    c["upstreams"][0]["retries"] = "3"
    add("wrong_type", c, [("upstreams[0].retries", [('"retries": "3"', 1)])])

    c = _good()
    c["upstreams"][0]["servers"][0]["weight"] = 0
    add("out_of_range", c, [("upstreams[0].servers[0].weight", [('"weight": 0', 1)])])

    c = _good()
    c["steering"] = "fastest"
    add("bad_enum", c, [("steering", [('"steering"', 1)])])

    c = _good()
    c["upstreams"][1]["name"] = "web"
    # the duplicate is the second "web"; its object start is accepted too
    add("duplicate_name", c, [("upstreams[1]", [('"name": "web"', 2), ('"name": "web"', 2, -1)])])

    c = _good()
    c["listeners"][0]["routes"][0]["upstream"] = "apx"
    add("unknown_upstream", c, [("listeners[0].routes[0].upstream", [('"upstream": "apx"', 1)])])

    c = _good()
    c["listeners"][0]["listen"] = "127.0.0.1:notaport"
    add("bad_address", c, [("listeners[0].listen", [('"listen"', 1)])])

    c = _good()
    add("json_syntax", c, [("", [('"workers": 1', 1)])],
        text_edit=lambda s: s.replace('"workers": 1,', '"workers": 1x,'))

    c = _good()
    c["wokers"] = 2
    c["listeners"][0]["routes"][0]["upstream"] = "apx"
    c["upstreams"][0]["servers"][0]["weight"] = 0
    add("three_errors_all_reported", c, [("wokers", [('"wokers"', 1)]),
                                         ("listeners[0].routes[0].upstream", [('"upstream": "apx"', 1)]),
                                         ("upstreams[0].servers[0].weight", [('"weight": 0', 1)])])
    return cases


def _check_errors(name, path, out, expect):
    errs = []
    for l in out.splitlines():
        m = ERR_RE.search(l)
        if m and os.path.basename(m.group(1)) == os.path.basename(path):
            errs.append((int(m.group(2)), int(m.group(3)), m.group(4) or "", m.group(5)))
    check(errs, "%s: no FILE:LINE:COL: path: message line in the output:\n%s" % (name, out))
    for jpath, lines in expect:
        hit = [e for e in errs if (jpath == "" or e[2].startswith(jpath)) and e[0] in lines and e[1] >= 1]
        check(hit, "%s: want an error at line %s for %r; got:\n%s" % (name, lines, jpath or "(syntax)", out))


def test_check_flag_reports_each_bad_config_with_file_line_col_and_exits_1(t):
    problems = []
    for name, text, expect in _bad_cases():
        path = t.file("bad_%s.json" % name, text)
        rc, out = t.run(["-t", "-c", path])
        try:
            check(rc == 1, "%s: -t exit status %s, want 1; output:\n%s" % (name, rc, out))
            check("ok" not in out.split(), "%s: -t printed ok for a bad file" % name)
            _check_errors(name, path, out, expect)
        except lib.TestFailure as e:
            problems.append(str(e))
    check(not problems, "\n".join(problems))


def test_proxy_refuses_to_start_with_bad_config_exit_1(t):
    problems = []
    for name, text, expect in _bad_cases():
        path = t.file("bad_%s.json" % name, text)
        p = lib.Proxy(t, None, path=path, name="bad_" + name)
        rc = p.wait_exit(10)
        out = p.log_text()
        if rc is None:
            problems.append("%s: proxy still running 10 s after start with a bad file" % name)
            p.close()
            continue
        try:
            check(rc == 1, "%s: exit status %s, want 1; stderr:\n%s" % (name, rc, out))
            _check_errors(name, path, out, expect)
        except lib.TestFailure as e:
            problems.append(str(e))
    check(not problems, "\n".join(problems))


def test_check_flag_prints_ok_for_default_config(t):
    rc, out = t.run(["-t", "-c", "conf/shardproxy.json"])
    check(rc == 0 and out.strip().splitlines()[-1:] == ["ok"],
          "-t -c conf/shardproxy.json: exit %s, output %r; want exit 0 and 'ok'" % (rc, out))


def test_check_flag_prints_ok_for_valid_config(t):
    path = lib.write_config(os.path.join(t.tmpdir, "good.json"), _good())
    rc, out = t.run(["-t", "-c", path])
    check(rc == 0 and out.strip() == "ok", "-t on a valid file: exit %s, output %r" % (rc, out))


def test_missing_config_file_is_an_error_naming_it(t):
    path = os.path.join(t.tmpdir, "nope.json")
    rc, out = t.run(["-t", "-c", path])
    check(rc == 1, "-t on a missing file: exit %s, want 1; output %r" % (rc, out))
    check("nope.json" in out, "the error does not name the file: %r" % out)


def _addr_in_use(t, index):
    busy = socket.create_server((lib.LOOPBACK, 0))  # no SO_REUSEPORT: the proxy cannot share it
    t.defer(busy.close)
    bport = busy.getsockname()[1]
    ports = [lib.free_port(), lib.free_port()]
    ports[index] = bport
    conf = lib.config([lib.listener("a", ports[0], "u"), lib.listener("b", ports[1], "u")],
                      [lib.upstream("u", ["127.0.0.1:9"])])
    p = t.proxy(conf, ready=False)
    rc = p.wait_exit(10)
    check(rc is not None, "proxy still running 10 s after failing to bind; log:\n%s" % p.tail())
    check(rc == 2, "exit status %s on address in use, want 2; stderr:\n%s" % (rc, p.tail()))
    rx = re.compile(r"listeners\[%d\]\.listen 127\.0\.0\.1:%d: bind: Address already in use" % (index, bport))
    hits = [l for l in p.lines() if rx.search(l)]
    check(len(hits) == 1, "want one line naming listeners[%d].listen 127.0.0.1:%d: bind: Address already in use; "
          "stderr:\n%s" % (index, bport, p.tail()))
    check(not p.wait_log(r"ready: generation", 0), "a 'ready' line despite the failure:\n%s" % p.tail())
    check(lib.wait_until(lambda: not lib.pgid_members(p.pid), 3),
          "processes left behind: %s" % lib.pgid_members(p.pid))


def test_address_in_use_exits_2_naming_listener_0(t):
    _addr_in_use(t, 0)


def test_address_in_use_exits_2_naming_listener_1(t):
    _addr_in_use(t, 1)


def test_version_flag_reports_steering(t):
    rc, out = t.run(["-V"])
    check(rc == 0, "-V exit status %s" % rc)
    check(re.search(r"^shardproxy\s+\S+", out, re.M), "-V prints no version line: %r" % out)
    check(re.search(r"^steering: (hash|cpu|least_conn) \(bpf|^steering: none \(", out, re.M),
          "-V prints no 'steering: ...' line: %r" % out)


def test_workers_flag_overrides_file(t):
    up = t.echo()
    port = lib.free_port()
    conf = lib.config([lib.listener("l", port, "u")], [lib.upstream("u", [up.address])], workers=1)
    p = t.proxy(conf, workers=3)
    p.expect_log(r"ready: generation 1, 3 shards", 1, what="-w 3")
    p.wait_shards(3)
    lib.check_echo(port, b"hello", up)


def test_default_workers_auto_one_shard_per_cpu(t):
    up = t.echo()
    port = lib.free_port()
    conf = lib.config([lib.listener("l", port, "u")], [lib.upstream("u", [up.address])], workers="auto")
    p = t.proxy(conf)
    p.wait_shards(os.sysconf("SC_NPROCESSORS_ONLN"))
    lib.check_echo(port, b"hello", up)


def _shard_masks(t, affinity):
    up = t.echo()
    port = lib.free_port()
    conf = lib.config([lib.listener("l", port, "u")], [lib.upstream("u", [up.address])], workers=2,
                      cpu_affinity=affinity)
    p = t.proxy(conf)
    shards = p.wait_shards(2)
    lib.check_echo(port, b"hello", up)
    return os.sched_getaffinity(p.pid), [os.sched_getaffinity(s) for s in shards]


def test_cpu_affinity_pin_puts_each_shard_on_its_own_cpu(t):
    lib.require_cpus(2)
    sup, masks = _shard_masks(t, "pin")
    check(all(len(m) == 1 for m in masks) and masks[0] != masks[1] and all(m <= sup for m in masks),
          "pin: shard masks %s (supervisor %s), want one distinct CPU each" % (masks, sup))


def test_cpu_affinity_none_leaves_shards_on_the_supervisors_cpus(t):
    lib.require_cpus(2)
    sup, masks = _shard_masks(t, "none")
    check(all(m == sup for m in masks),
          "none: shard masks %s, want the supervisor's %s" % (masks, sup))
