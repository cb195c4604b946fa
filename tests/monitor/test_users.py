"""Dashboard users: `sleepsound monitor users`, hashes at rest, and logging in by name and password
on a live server (with the operator token still working, failed logins limited, a removed user out)."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from sleepsound.cli import app as cli
from sleepsound.monitor.app import Settings
from sleepsound.monitor.users import add_user, remove_user, users_path, verify_password
from tests.monitor.conftest import Live

PASSWORD = "correct horse battery"
TOKEN = "operator-secret-token"


def test_users_are_added_listed_and_removed_with_salted_scrypt_hashes_and_no_password_shown(tmp_path: Path) -> None:
    root = tmp_path / "root"
    runner = CliRunner()
    added = runner.invoke(cli, ["monitor", "users", "add", "nurse-1", "--root", str(root)], input=f"{PASSWORD}\n" * 2)
    assert added.exit_code == 0, added.output
    assert PASSWORD not in added.output and "added nurse-1" in added.output
    again = runner.invoke(
        cli, ["monitor", "users", "add", "nurse-2", "--root", str(root), "--password-stdin"], input=f"{PASSWORD}\n"
    )
    assert again.exit_code == 0 and PASSWORD not in again.output

    path = users_path(root)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert PASSWORD not in text
    users = json.loads(text)["users"]
    one, two = users["nurse-1"]["hash"], users["nurse-2"]["hash"]
    assert one.startswith("scrypt$16384$8$1$") and one != two  # salted: the same password, two hashes
    assert verify_password(PASSWORD, one) and not verify_password(PASSWORD + "x", one)
    assert not verify_password(PASSWORD, "sha256$abc")  # a damaged entry never matches

    listed = runner.invoke(cli, ["monitor", "users", "list", "--root", str(root)])
    assert listed.exit_code == 0 and "nurse-1" in listed.stdout and "nurse-2" in listed.stdout
    assert "scrypt" not in listed.stdout

    mismatch = runner.invoke(
        cli, ["monitor", "users", "add", "nurse-3", "--root", str(root)], input=f"{PASSWORD}\nsomething else\n" * 3
    )
    assert mismatch.exit_code != 0 and "nurse-3" not in path.read_text()
    short = runner.invoke(cli, ["monitor", "users", "add", "x", "--root", str(root), "--password-stdin"], input="abc\n")
    assert short.exit_code == 2 and "at least 10 characters" in short.output
    bad_name = runner.invoke(
        cli, ["monitor", "users", "add", "a b", "--root", str(root), "--password-stdin"], input=f"{PASSWORD}\n"
    )
    assert bad_name.exit_code == 2 and "user name" in bad_name.output

    removed = runner.invoke(cli, ["monitor", "users", "remove", "nurse-2", "--root", str(root)])
    assert removed.exit_code == 0 and "nurse-2" not in json.loads(path.read_text())["users"]
    assert runner.invoke(cli, ["monitor", "users", "remove", "nurse-2", "--root", str(root)]).exit_code == 2
    path.write_text("[1, 2]")
    damaged = runner.invoke(cli, ["monitor", "users", "list", "--root", str(root)])
    assert damaged.exit_code == 2 and str(path) in damaged.output and "not a users file" in damaged.output


USERS = Settings(
    operator_token_hash=hashlib.sha256(TOKEN.encode()).hexdigest(),
    rate_per_s=1000.0,
    burst=1000,
    login_failures=3,
)


def _login(client: httpx.Client, base: str, **form: str) -> httpx.Response:
    return client.post(f"{base}/login", data=form, follow_redirects=False)


@pytest.mark.parametrize("live", [USERS], indirect=True)
def test_users_log_in_by_name_and_password_failures_are_limited_and_the_token_still_works(
    live: Live, fresh_root: Path
) -> None:
    path = users_path(fresh_root)
    add_user(path, "nurse-1", PASSWORD)  # on a running server: no restart needed
    add_user(path, "nurse-2", PASSWORD + "2")
    base = live.base
    with httpx.Client(timeout=30) as nurse:
        assert nurse.get(f"{base}/v1/beds").status_code == 401
        reply = _login(nurse, base, name="nurse-1", password=PASSWORD)
        assert reply.status_code == 303 and reply.headers["location"] == "/dashboard"
        assert nurse.get(f"{base}/v1/me").json() == {"who": "nurse-1", "open": False}
        assert nurse.get(f"{base}/v1/beds").status_code == 200

        with httpx.Client(timeout=30) as guesser:
            for guess in ("guess-one-1", "guess-two-2", "guess-three"):
                failed = _login(guesser, base, name="nurse-2", password=guess)
                assert failed.status_code == 401 and "Unknown name or wrong password." in failed.text
            unknown = _login(guesser, base, name="nobody", password=PASSWORD)
            assert unknown.status_code == 401 and "Unknown name or wrong password." in unknown.text  # same answer
            # past the limit for that name even the right password is refused, unread
            locked = _login(guesser, base, name="nurse-2", password=PASSWORD + "2")
            assert locked.status_code == 429 and "Too many failed logins" in locked.text
            assert int(locked.headers["retry-after"]) > 0
            assert guesser.get(f"{base}/v1/beds").status_code == 401

        with httpx.Client(timeout=30) as operator:  # the operator token, in the form and as a bearer
            assert _login(operator, base, token="not-it").status_code == 401
            assert _login(operator, base, token=TOKEN).status_code == 303
            assert operator.get(f"{base}/v1/me").json()["who"] == "operator"
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.get(f"{base}/v1/beds", headers=bearer).status_code == 200
        assert httpx.get(f"{base}/v1/beds", headers={"Authorization": "Bearer nurse-1"}).status_code == 403
        # a device opening a session needs the token, never a user's password
        assert httpx.post(f"{base}/v1/sessions", json={"bed_id": "b1"}).status_code == 401

        remove_user(path, "nurse-1")  # removed: the open login ends with it
        assert nurse.get(f"{base}/v1/beds").status_code == 401
        assert _login(nurse, base, name="nurse-1", password=PASSWORD).status_code == 401

        add_user(path, "nurse-1", PASSWORD)
        assert _login(nurse, base, name="nurse-1", password=PASSWORD).status_code == 303
        assert nurse.post(f"{base}/logout", follow_redirects=False).status_code == 303
        assert nurse.get(f"{base}/v1/beds").status_code == 401

        path.write_text("{not json")  # a damaged users file: the last good users stay, nothing opens up
        assert _login(nurse, base, name="nurse-1", password=PASSWORD).status_code == 303
        assert httpx.get(f"{base}/v1/beds").status_code == 401
