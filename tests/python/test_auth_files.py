"""`fleetmq-broker passwd`: the real binary editing real password files, including files written
by Debian's mosquitto_passwd (whose lines must survive byte for byte)."""

import os
import pty
import re
import select
import shutil
import stat
import subprocess
import termios
import time

import pytest

from conftest import broker_binary

ARGON2_LINE = re.compile(r"^(?P<user>[^:]+):\$argon2id\$v=19\$m=19456,t=2,p=1\$(?P<salt>[A-Za-z0-9+/]{22})\$[A-Za-z0-9+/]{43}$")


def passwd(*args, stdin=None, cwd=None):
    env = dict(os.environ, RUST_BACKTRACE="0")
    return subprocess.run([broker_binary(), "passwd", *args], input=stdin, capture_output=True, text=True,
                          timeout=30, cwd=cwd, env=env)


def lines(path):
    return path.read_text().splitlines()


def test_create_writes_a_private_argon2id_file(tmp_path):
    path = tmp_path / "passwords"
    result = passwd("-c", "-b", str(path), "alice", "s3cret")
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    [line] = lines(path)
    match = ARGON2_LINE.match(line)
    assert match and match["user"] == "alice", line
    assert "s3cret" not in path.read_text()


def test_update_in_place_keeps_comments_and_other_lines(tmp_path):
    path = tmp_path / "passwords"
    path.write_text("# fleet A\nalice:$7$101$AAAAAAAAAAAAAAAA$x\n\n# fleet B\nbob:$7$101$AAAAAAAAAAAAAAAA$y\n")
    os.chmod(path, 0o640)
    assert passwd("-b", str(path), "alice", "new").returncode == 0
    got = lines(path)
    assert got[0] == "# fleet A"
    assert ARGON2_LINE.match(got[1]) and got[1].startswith("alice:")
    assert got[2:] == ["", "# fleet B", "bob:$7$101$AAAAAAAAAAAAAAAA$y"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640, "an existing file keeps its mode"
    # The hand-made bob line is not a valid hash: the edit happens, with a warning naming it.
    result = passwd("-b", str(path), "carol", "c")
    assert result.returncode == 0
    assert "warning:" in result.stderr and ":5:" in result.stderr, result.stderr
    assert lines(path)[-1].startswith("carol:$argon2id$")
    # No temporary file is left next to it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["passwords"]


def test_password_from_stdin_when_not_a_terminal(tmp_path):
    path = tmp_path / "passwords"
    assert passwd("-c", "-b", str(path), "alice", "a").returncode == 0
    result = passwd(str(path), "bob", stdin="from-stdin\n")
    assert result.returncode == 0, result.stderr
    assert [l.split(":")[0] for l in lines(path)] == ["alice", "bob"]
    # Empty input is refused and changes nothing.
    before = path.read_text()
    result = passwd(str(path), "carol", stdin="")
    assert result.returncode != 0
    assert "empty password" in result.stderr
    assert path.read_text() == before


def test_delete_and_errors(tmp_path):
    path = tmp_path / "passwords"
    assert passwd("-c", "-b", str(path), "alice", "a").returncode == 0
    assert passwd("-b", str(path), "bob", "b").returncode == 0
    assert passwd("-D", str(path), "alice").returncode == 0
    assert [l.split(":")[0] for l in lines(path)] == ["bob"]

    result = passwd("-D", str(path), "alice")
    assert result.returncode != 0 and f'user "alice" is not in {path}' in result.stderr

    missing = tmp_path / "missing"
    result = passwd("-b", str(missing), "u", "p")
    assert result.returncode != 0 and f"{missing}: no such file (use -c to create it)" in result.stderr
    assert not missing.exists()

    for bad in ["a:b", "tab\there"]:
        result = passwd("-b", str(path), bad, "p")
        assert result.returncode != 0 and "invalid username" in result.stderr, result.stderr
    result = passwd("-c", "-D", str(path), "bob")
    assert result.returncode != 0 and "-c and -D cannot be used together" in result.stderr
    result = passwd(str(path), "bob", "p")
    assert result.returncode != 0 and "needs -b" in result.stderr
    assert [l.split(":")[0] for l in lines(path)] == ["bob"], "failed commands change nothing"


def test_create_to_stdout(tmp_path):
    result = passwd("-c", "-b", "-", "u", "p", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert ARGON2_LINE.match(result.stdout.strip()), result.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="needs Debian's mosquitto")
def test_mosquitto_passwd_lines_survive(tmp_path):
    path = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(path), "legacy", "pw"], check=True)
    subprocess.run(["mosquitto_passwd", "-b", "-H", "sha512", str(path), "older", "pw"], check=True)
    original = lines(path)
    assert original[0].startswith("legacy:$7$") and original[1].startswith("older:$6$")
    result = passwd("-b", str(path), "new", "pw")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", "mosquitto's lines parse cleanly"
    got = lines(path)
    assert got[:2] == original
    assert ARGON2_LINE.match(got[2])


def test_terminal_prompt_twice_without_echo(tmp_path):
    path = tmp_path / "passwords"
    assert passwd("-c", "-b", str(path), "alice", "a").returncode == 0

    def interact(first: bytes, second: bytes):
        pid, fd = pty.fork()
        if pid == 0:
            os.execv(broker_binary(), [broker_binary(), "passwd", str(path), "bob"])
        out = b""

        def read_until(marker: bytes, timeout=10.0):
            nonlocal out
            deadline = time.monotonic() + timeout
            while marker not in out and time.monotonic() < deadline:
                ready, _, _ = select.select([fd], [], [], 0.1)
                if ready:
                    try:
                        out += os.read(fd, 1024)
                    except OSError:
                        break

        def echo_off(timeout=10.0):
            # The prompt is printed before echo is switched off: typing earlier would be
            # echoed by the terminal itself, whatever the program does. (Linux ptys share
            # one termios between master and slave.)
            deadline = time.monotonic() + timeout
            while termios.tcgetattr(fd)[3] & termios.ECHO and time.monotonic() < deadline:
                time.sleep(0.01)

        read_until(b"Password: ")
        echo_off()
        os.write(fd, first + b"\n")
        read_until(b"Reenter password: ")
        echo_off()
        os.write(fd, second + b"\n")
        read_until(b"\n" * 99, timeout=30)  # drain until exit
        _, status = os.waitpid(pid, 0)
        os.close(fd)
        return os.waitstatus_to_exitcode(status), out

    code, out = interact(b"tty-secret", b"tty-secret")
    assert code == 0, out
    assert b"tty-secret" not in out, "no echo"
    assert [l.split(":")[0] for l in lines(path)] == ["alice", "bob"]

    before = path.read_text()
    code, out = interact(b"one", b"two")
    assert code != 0
    assert b"passwords do not match" in out
    assert path.read_text() == before
