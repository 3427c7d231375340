"""The KEDA scaler's TLS credentials, re-read from their files when a renewed certificate is mounted."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grpc

__all__ = ["CertificateFiles", "server_credentials"]

log = logging.getLogger("harmony_operator.keda")


class CertificateFiles:
    """The TLS files, re-read when they change: a renewed Secret (cert-manager) is mounted by swapping a
    symlink, and new connections get the new certificate without a restart."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None) -> None:
        self.paths = [p for p in (cert, key, client_ca) if p is not None]
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self._seen = self._fingerprint()

    def _fingerprint(self) -> tuple[tuple[int, int, int], ...]:
        out = []
        for p in self.paths:
            st = p.stat()
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(out)

    def configuration(self) -> Any:
        ca = self.client_ca.read_bytes() if self.client_ca is not None else None
        return grpc.ssl_server_certificate_configuration(
            [(self.key.read_bytes(), self.cert.read_bytes())], root_certificates=ca
        )

    def fetch(self) -> Any:
        """gRPC's fetcher, called on each handshake: a new configuration when the files changed, else None."""
        try:
            now = self._fingerprint()
            if now == self._seen:
                return None
            config = self.configuration()
        except (OSError, ValueError) as exc:  # half-written during the swap: keep the current one
            log.warning("TLS files unreadable, keeping the loaded certificate: %s", exc)
            return None
        self._seen = now
        log.info("TLS certificate files changed: reloaded")
        return config


def server_credentials(
    cert: Path | None, key: Path | None, client_ca: Path | None
) -> grpc.ServerCredentials | None:
    """TLS credentials that follow the files (None without a certificate and key: plaintext); with
    `client_ca`, clients must present a certificate it signed (mutual TLS)."""
    if cert is None or key is None:
        return None
    files = CertificateFiles(cert, key, client_ca)
    return grpc.dynamic_ssl_server_credentials(
        files.configuration(), files.fetch, require_client_authentication=client_ca is not None
    )
