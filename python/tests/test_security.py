"""Tokens and TLS as the CLI uses them: the token from an argument,
DROVER_TOKEN or DROVER_TOKEN_FILE, sent as a bearer token; https:// with the
CA that signed the master's certificate."""

from __future__ import annotations

import shutil
import subprocess

import pytest

import drover

TOKEN = "client-s3cret"


def test_the_token_is_sent_from_the_argument_or_the_environment(new_cluster, tmp_path, monkeypatch):
    cluster = new_cluster(token=TOKEN)
    with drover.Pool(master=cluster.url, token=TOKEN) as pool:
        assert pool.map(drover.fib, range(2, 8)) == [1, 2, 3, 5, 8, 13]

    with drover.Pool(master=cluster.url) as pool, pytest.raises(drover.AuthError, match="unauthenticated") as raised:
        pool.map(drover.fib, [1])
    assert isinstance(raised.value, PermissionError)
    with drover.Executor(master=cluster.url, token="wrong") as ex, pytest.raises(drover.AuthError):
        ex.submit(drover.fib, 1).result(timeout=30)

    monkeypatch.setenv("DROVER_MASTER", cluster.url)
    monkeypatch.setenv("DROVER_TOKEN", TOKEN)
    with drover.Pool() as pool:
        assert pool.apply(drover.fib, (10,)) == 55
    monkeypatch.delenv("DROVER_TOKEN")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    monkeypatch.setenv("DROVER_TOKEN_FILE", str(token_file))
    with drover.Executor() as ex:
        assert ex.submit(drover.fib, 11).result(timeout=30) == 89


def openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def pki(tmp_path):
    """A CA and a certificate for 127.0.0.1 it signed, and a rogue CA."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    d = tmp_path
    for ca in ("ca", "rogue"):
        openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2", "-subj", f"/CN=drover test {ca}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=d,
        )  # fmt: skip
    openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
        cwd=d,
    )  # fmt: skip
    (d / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
    )
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "server.ext",
        cwd=d,
    )  # fmt: skip
    return {"cert": str(d / "server.pem"), "key": str(d / "server.key"), "ca": str(d / "ca.pem"), "rogue": str(d / "rogue.pem")}


def test_tls_with_the_ca_that_signed_the_masters_certificate(new_cluster, pki):
    cluster = new_cluster(tls=pki)
    assert cluster.url.startswith("https://")
    with drover.Pool(master=cluster.url, ca=pki["ca"]) as pool:
        assert pool.map(drover.is_prime, [1112582705942171, 1112272535095293]) == [True, False]
    # PEM bytes do as well as a path.
    with open(pki["ca"], "rb") as f:
        with drover.Executor(master=cluster.url, ca=f.read()) as ex:
            assert ex.submit(drover.fib, 12).result(timeout=30) == 144

    with pytest.raises(ValueError, match="ca="):
        drover.Pool(master=cluster.url)
    with drover.Pool(master=cluster.url, ca=pki["rogue"]) as rogue:
        with pytest.raises(drover.MasterUnavailable, match=cluster.url):
            rogue.map(drover.fib, [1])
    plain = cluster.url.replace("https://", "http://")
    with drover.Pool(master=plain) as pool, pytest.raises(drover.MasterUnavailable, match=plain):
        pool.map(drover.fib, [1])
