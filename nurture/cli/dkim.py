"""``nurture dkim ...``: make a DKIM key and print the DNS record that publishes it."""

from __future__ import annotations

import os
from pathlib import Path

import click

from nurture.cli.common import load_settings
from nurture.core.config import MailSettings


@click.group()
def dkim() -> None:
    """DKIM signing keys (docs/operating.md, "Deliverability")."""


@dkim.command("keygen")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--selector", default=None, help="Default: NURTURE_DKIM_SELECTOR (nurture).")
@click.option("--domain", default=None, help="Default: NURTURE_DKIM_DOMAIN, else the domain of NURTURE_FROM.")
@click.option("--bits", default=2048, show_default=True, type=click.IntRange(1024, 4096))
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def dkim_keygen(out: Path, selector: str | None, domain: str | None, bits: int, force: bool) -> None:
    """Write a new RSA private key to OUT (mode 0600) and print the DNS TXT record to publish."""
    from pydantic import ValidationError

    from nurture.core.config import _DNS_NAME
    from nurture.core.dkim_keys import generate_private_key
    from nurture.mail.dkim import public_record

    try:  # without NURTURE_DKIM_KEY: the key may not exist yet, that is why we are here
        mail: MailSettings | None = MailSettings(dkim_key="")
    except ValidationError:
        mail = None
    selector = selector or (mail.dkim_selector if mail else "nurture")
    domain = (domain or (mail.resolved_dkim_domain if mail else "")).lower().rstrip(".")
    for label, value in (("--selector", selector), ("--domain", domain)):
        if not _DNS_NAME.fullmatch(value):
            raise click.BadParameter(f"{value!r} is not a DNS name", param_hint=label)
    pem = generate_private_key(bits)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(out, flags, 0o600)
    except FileExistsError:
        raise click.ClickException(f"{out} exists; use --force to replace it") from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {out}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)  # also when --force replaced a file with looser permissions
        handle.write(pem)
    _print_dkim_record(f"{selector}._domainkey.{domain}", public_record(pem))
    click.echo(f"wrote a {bits}-bit RSA private key to {out} (mode 0600); then set")
    click.echo(f"  NURTURE_DKIM_KEY={out.resolve()}")
    click.echo(f"  NURTURE_DKIM_SELECTOR={selector}")
    click.echo(f"  NURTURE_DKIM_DOMAIN={domain}")


@dkim.command("record")
def dkim_record() -> None:
    """Print the DNS TXT record for the configured key (NURTURE_DKIM_KEY)."""
    from nurture.mail.dkim import DkimSigner

    settings = load_settings()
    if not settings.mail.dkim_key:
        raise click.ClickException("NURTURE_DKIM_KEY is not set (`nurture dkim keygen` makes a key)")
    signer = DkimSigner.from_settings(settings)
    _print_dkim_record(signer.dns_name, signer.public_record())


def _print_dkim_record(name: str, value: str) -> None:
    from nurture.mail.dkim import zone_file_line

    click.echo("publish this DNS TXT record:")
    click.echo(f"  name:  {name}")
    click.echo(f"  value: {value}")
    click.echo("as a zone-file line (long values split into 255-character strings):")
    click.echo(f"  {zone_file_line(name, value)}")
