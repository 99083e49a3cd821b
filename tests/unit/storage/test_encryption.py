"""Encryption at rest (SQLCipher): every command on an encrypted file, no plaintext on disk,
wrong and missing keys, rekey, key files and key sources."""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from sidecar.cli.commands import main
from sidecar.config import load_config
from sidecar.errors import ConfigError
from sidecar.storage import cipher
from tests.support.seed import create_db, event, sha256

pytestmark = pytest.mark.skipif(not cipher.available(),
                                reason="SQLCipher is not installed (kairo-sidecar[encryption])")

MARKER = b"row-e-0000003-end"  # in the payload of event 3 (tests.support.seed.event)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("KAIRO_SIDECAR_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def new_key(capsys: pytest.CaptureFixture[str], path: Path) -> str:
    assert cli(capsys, "keygen", str(path))[0] == 0
    return path.read_text().strip()


def encrypted_db(tmp_path: Path, capsys: pytest.CaptureFixture[str], n: int = 10) -> tuple[Path, Path]:
    plain = create_db(tmp_path / "plain.db", [event(i) for i in range(n)])
    key = tmp_path / "db.key"
    new_key(capsys, key)
    code, _, err = cli(capsys, "encrypt", str(plain), str(tmp_path / "enc.db"), "--key-file", str(key))
    assert code == 0, err
    return tmp_path / "enc.db", key


def no_plaintext(path: Path) -> None:
    for f in (path, Path(f"{path}-wal")):
        if f.exists():
            assert MARKER not in f.read_bytes(), f"plaintext payload in {f}"


def test_every_command_round_trips_an_encrypted_file(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """encrypt, migrate, check, query/get/latest/replay/stats/dead-letters --db, kv put/get,
    export, import, purge, backup, recover and decrypt all work on an encrypted file with the
    key; what they write stays encrypted; the plain copy at the end holds every event; the key
    is printed by none of them."""
    enc, key = encrypted_db(tmp_path, capsys)
    hexkey = key.read_text().strip()
    no_plaintext(enc)
    k = ["--key-file", str(key)]
    d = ["--db", str(enc), *k]
    outputs: list[str] = []

    def ok(*argv: str) -> str:
        code, out, err = cli(capsys, *argv)
        outputs.extend((out, err))
        assert code == 0, (argv, err)
        return out

    ok("migrate", *d)
    assert "events        10" in ok("check", *d)
    assert len(ok("query", *d).splitlines()) == 10
    assert json.loads(ok("get", "e-0000003", *d))["payload"]["marker"] == MARKER.decode()
    ok("latest", "payload.i", *d)
    assert len(ok("replay", *d).splitlines()) == 10
    assert json.loads(ok("stats", *d))["events_total"] == 10
    ok("dead-letters", "list", *d)
    ok("kv", "put", "boiler", '"on"', *d)
    assert "on" in ok("kv", "get", "boiler", *d)
    exported = tmp_path / "all.jsonl"
    ok("export", "-o", str(exported), *d)
    extra = [json.loads(line) for line in exported.read_text().splitlines() if "id" in line][:1]
    extra[0]["id"] = "imported-1"
    (tmp_path / "one.jsonl").write_text(json.dumps(extra[0]) + "\n")
    ok("import", str(tmp_path / "one.jsonl"), *d)
    ok("purge", "--dry-run", *d)
    ok("purge", *d)
    no_plaintext(enc)
    ok("backup", str(tmp_path / "backup.db"), *d)
    no_plaintext(tmp_path / "backup.db")
    total = json.loads(ok("stats", *d))["events_total"]  # 10 + the kv event + the import
    assert total == 12
    assert f"events        {total}" in ok("check", str(tmp_path / "backup.db"), *k)
    ok("recover", str(enc), str(tmp_path / "recovered.db"), *k)
    no_plaintext(tmp_path / "recovered.db")
    assert f"events        {total}" in ok("check", str(tmp_path / "recovered.db"), *k)
    ok("decrypt", str(enc), str(tmp_path / "clear.db"), *k)
    clear = sqlite3.connect(tmp_path / "clear.db")
    try:
        assert clear.execute("SELECT count(*) FROM events").fetchone()[0] == total
        assert clear.execute("SELECT value FROM kv_store WHERE key = 'boiler'").fetchone()
    finally:
        clear.close()
    assert MARKER in (tmp_path / "clear.db").read_bytes()
    assert not any(hexkey in text for text in outputs)


@pytest.mark.parametrize("argv", [
    ["check", "{db}"], ["query", "--db", "{db}"], ["export", "--db", "{db}"],
    ["migrate", "--db", "{db}"], ["purge", "--db", "{db}"], ["stats", "--db", "{db}"],
    ["backup", "{dir}/b.db", "--db", "{db}"], ["recover", "{db}", "{dir}/r.db"],
    ["decrypt", "{db}", "{dir}/p.db"], ["rekey", "--db", "{db}", "--new-key-file", "{dir}/new.key"],
], ids=lambda a: a[0])
@pytest.mark.parametrize("how", ["wrong", "missing"])
def test_wrong_or_missing_key_exits_9_and_leaves_the_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], how: str) -> None:
    """Every command given a wrong key, or none, for an encrypted file exits 9 with our message
    (never "file is not a database"), and the file stays byte for byte, without a WAL."""
    enc, _ = encrypted_db(tmp_path, capsys)
    other = tmp_path / "other.key"
    new_key(capsys, other)
    new_key(capsys, tmp_path / "new.key")
    before = sha256(enc)
    args = [a.replace("{db}", str(enc)).replace("{dir}", str(tmp_path)) for a in argv]
    if how == "wrong":
        args += ["--key-file", str(other)]
    code, _, err = cli(capsys, *args)
    if argv[0] in ("decrypt", "rekey") and how == "missing":
        assert code == 2 and "needs the database key" in err  # these cannot run without one
    else:
        assert code == 9, err
        assert ("does not open" in err) if how == "wrong" else ("looks encrypted" in err)
    assert "not a database" not in err and "Traceback" not in err
    assert sha256(enc) == before
    assert not Path(f"{enc}-wal").exists()


def test_plain_file_with_a_key_exits_9(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A plain database opened with a key configured exits 9, says it is not encrypted and
    how to encrypt it, and is left as it was."""
    plain = create_db(tmp_path / "plain.db", [event(i) for i in range(3)])
    key = tmp_path / "db.key"
    new_key(capsys, key)
    before = sha256(plain)
    code, _, err = cli(capsys, "migrate", "--db", str(plain), "--key-file", str(key))
    assert code == 9 and "plain (unencrypted)" in err and "kairo-sidecar encrypt" in err
    assert sha256(plain) == before


def test_rekey_then_only_the_new_key_opens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """rekey re-encrypts under the new key: the old one no longer opens the file (exit 9), the
    new one reads every event, and the bytes on disk changed."""
    enc, old = encrypted_db(tmp_path, capsys)
    new = tmp_path / "new.key"
    new_key(capsys, new)
    before = sha256(enc)
    code, _, err = cli(capsys, "rekey", "--db", str(enc), "--key-file", str(old),
                       "--new-key-file", str(new))
    assert code == 0, err
    assert sha256(enc) != before
    assert cli(capsys, "check", str(enc), "--key-file", str(old))[0] == 9
    code, out, _ = cli(capsys, "check", str(enc), "--key-file", str(new))
    assert code == 0 and "events        10" in out
    no_plaintext(enc)


def test_rekey_refused_while_the_file_is_open(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """rekey while another process's connection has the file open (as the daemon does) exits 7
    and leaves the file byte for byte."""
    enc, old = encrypted_db(tmp_path, capsys)
    new = tmp_path / "new.key"
    new_key(capsys, new)
    holder = cipher.connect(enc, key=cipher.read_key_file(old))
    holder.execute("PRAGMA journal_mode = WAL")
    holder.execute("SELECT count(*) FROM events").fetchone()
    before = sha256(enc)
    try:
        code, _, err = cli(capsys, "rekey", "--db", str(enc), "--key-file", str(old),
                           "--new-key-file", str(new))
    finally:
        holder.close()
    assert code == 7 and "open in another process" in err
    assert sha256(enc) == before


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                mode: int) -> None:
    """A key file that group or others may read is refused (exit 2), naming the key and the
    file, before the database is opened."""
    enc, key = encrypted_db(tmp_path, capsys)
    shared = tmp_path / "etc"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    key = key.rename(shared / "db.key")
    key.chmod(mode)
    code, _, err = cli(capsys, "check", str(enc), "--key-file", str(key))
    assert code == 2 and "database.key_file" in err and str(key) in err and "chmod 600" in err


def test_key_file_in_a_private_directory_may_show_group_bits(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A key file in a directory only its owner can enter (systemd's credentials directory,
    where an ACL mask shows as group bits) is accepted with mode 0440."""
    enc, key = encrypted_db(tmp_path, capsys)
    private = tmp_path / "credentials"
    private.mkdir(mode=0o700)
    (private / "database-key").write_bytes(key.read_bytes())
    (private / "database-key").chmod(0o440)
    private.chmod(0o500)
    code, _, err = cli(capsys, "check", str(enc), "--key-file", str(private / "database-key"))
    assert code == 0, err


def test_key_file_owned_by_someone_else_is_refused(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A key file owned by another user (not this one, not root) is refused, naming the file."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file away")
    enc, key = encrypted_db(tmp_path, capsys)
    os.chown(key, 54321, 54321)
    code, _, err = cli(capsys, "check", str(enc), "--key-file", str(key))
    assert code == 2 and "owned by uid 54321" in err and str(key) in err


def test_keygen_writes_0600_and_never_overwrites(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """keygen writes 64 hex digits with mode 0600 whatever the umask, and refuses (exit 2) an
    existing file, which stays as it was."""
    old = os.umask(0)
    try:
        key = new_key(capsys, tmp_path / "k")
    finally:
        os.umask(old)
    assert len(key) == 64 and int(key, 16) >= 0
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600
    code, _, err = cli(capsys, "keygen", str(tmp_path / "k"))
    assert code == 2 and "already exists" in err
    assert (tmp_path / "k").read_text().strip() == key
    code, out, _ = cli(capsys, "keygen")
    assert code == 0 and len(out.strip()) == 64 and out.strip() != key


def test_encrypt_refuses_an_existing_dest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """encrypt and decrypt never overwrite DEST (exit 2) and never change SRC."""
    enc, key = encrypted_db(tmp_path, capsys)
    plain = tmp_path / "plain.db"
    before = sha256(plain)
    code, _, err = cli(capsys, "encrypt", str(plain), str(enc), "--key-file", str(key))
    assert code == 2 and "already exists" in err
    code, _, err = cli(capsys, "decrypt", str(enc), str(plain), "--key-file", str(key))
    assert code == 2 and "already exists" in err
    assert sha256(plain) == before


def test_key_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The key is read from the environment variable or the systemd credential database-key;
    it is refused in the TOML file, two sources at once, a malformed one, and with a PostgreSQL
    URL, each naming the key."""
    enc, key = encrypted_db(tmp_path, capsys)
    hexkey = key.read_text().strip()
    env = {"KAIRO_SIDECAR_DATABASE__KEY": hexkey, "KAIRO_SIDECAR_DATABASE__URL": f"sqlite:///{enc}"}
    config = load_config(environ=env)
    assert cipher.database_key(config.database).hex == hexkey  # type: ignore[union-attr]
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "database-key").write_text(hexkey + "\n")
    (creds / "database-key").chmod(0o400)
    config = load_config(environ={"CREDENTIALS_DIRECTORY": str(creds)})
    assert config.database.key_file == str(creds / "database-key")
    assert cipher.database_key(config.database).hex == hexkey  # type: ignore[union-attr]

    toml = tmp_path / "c.toml"
    toml.write_text(f'[database]\nkey = "{hexkey}"\n')
    with pytest.raises(ConfigError, match="never goes in the configuration file") as info:
        load_config(toml, environ={})
    assert info.value.key == "database.key"
    with pytest.raises(ConfigError, match="one key source"):
        load_config(environ={**env, "KAIRO_SIDECAR_DATABASE__KEY_FILE": str(key)})
    with pytest.raises(ConfigError, match="SQLite files only"):
        load_config(environ={"KAIRO_SIDECAR_DATABASE__KEY_FILE": str(key),
                             "KAIRO_SIDECAR_DATABASE__URL": "postgresql://k@127.0.0.1/kairo"})
    with pytest.raises(ConfigError, match="64 hex digits") as info:
        cipher.database_key(load_config(environ={"KAIRO_SIDECAR_DATABASE__KEY": "secret"}).database)
    assert "secret" not in str(info.value)


def test_config_command_masks_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`config` prints the key from the environment as *** ."""
    monkeypatch.setenv("KAIRO_SIDECAR_DATABASE__KEY", "ab" * 32)
    code, out, _ = cli(capsys, "config")
    assert code == 0 and "ab" * 32 not in out and json.loads(out)["database"]["key"] == "***"


def test_damaged_encrypted_file_is_checked_and_recovered(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A page of an encrypted file overwritten (its HMAC fails) is damage, not a key problem:
    check exits 6, and recover salvages every other row into a new encrypted file (exit 8)."""
    plain = create_db(tmp_path / "plain.db", [event(i) for i in range(3000)])
    key = tmp_path / "db.key"
    new_key(capsys, key)
    enc = tmp_path / "enc.db"
    assert cli(capsys, "encrypt", str(plain), str(enc), "--key-file", str(key))[0] == 0
    data = bytearray(enc.read_bytes())
    page = len(data) // 4096 // 2
    data[page * 4096:(page + 1) * 4096] = bytes(4096)
    enc.write_bytes(bytes(data))
    code, _, err = cli(capsys, "check", str(enc), "--key-file", str(key))
    assert code == 6 and "damaged" in err
    code, out, _ = cli(capsys, "recover", str(enc), str(tmp_path / "rec.db"), "--key-file", str(key))
    assert code == 8 and "passes integrity_check" in out
    no_plaintext(tmp_path / "rec.db")
    code, out, _ = cli(capsys, "check", str(tmp_path / "rec.db"), "--key-file", str(key))
    assert code == 0


def test_encrypt_and_decrypt_keep_seq_and_the_sequence(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Every event keeps its seq through encrypt and decrypt, and sqlite_sequence comes along,
    so a replay cursor stays valid and a seq of a deleted event is never handed out again."""
    plain = create_db(tmp_path / "plain.db", [event(i) for i in range(20)])
    con = sqlite3.connect(plain, isolation_level=None)
    con.execute("DELETE FROM events WHERE seq > 15 OR seq = 3")
    con.close()
    key = tmp_path / "db.key"
    new_key(capsys, key)
    enc, back = tmp_path / "enc.db", tmp_path / "back.db"
    assert cli(capsys, "encrypt", str(plain), str(enc), "--key-file", str(key))[0] == 0
    assert cli(capsys, "decrypt", str(enc), str(back), "--key-file", str(key))[0] == 0
    sql = ("SELECT (SELECT group_concat(seq || ':' || id) FROM events), "
           "(SELECT seq FROM sqlite_sequence WHERE name = 'events')")
    with closing(sqlite3.connect(plain)) as con:
        original = con.execute(sql).fetchone()
    enc_con = cipher.connect(enc, key=cipher.read_key_file(key))
    try:
        assert enc_con.execute(sql).fetchone() == original
    finally:
        enc_con.close()
    with closing(sqlite3.connect(back)) as con:
        assert con.execute(sql).fetchone() == original
    assert original[1] == 20
