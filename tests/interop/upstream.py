#!/usr/bin/env python3
"""A real upstream submission server for the interop tests: aiosmtpd (software nobody on
the project wrote) with STARTTLS and, unless --no-auth, AUTH LOGIN/PLAIN required.

Binds 127.0.0.1 port 0 and prints {"port": N}; then one JSON line per received message:
{"from", "rcpts", "data_b64", "auth"}. Runs until killed or stdin closes.

With --xoauth2-user U --xoauth2-tokens FILE it also offers AUTH XOAUTH2 (Google's and
Microsoft's SASL format) and accepts user U with any bearer token listed in FILE (one per
line, re-read at every AUTH; an identity platform stand-in writes it).

usage: upstream.py --cert C --key K [--user U --password P] [--no-auth]
                   [--xoauth2-user U --xoauth2-tokens FILE]
"""
import argparse
import asyncio
import base64
import json
import socket
import ssl
import sys

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Handler:
    def __init__(self, no_auth, xoauth2_user=None, xoauth2_tokens=None):
        self.no_auth = no_auth
        self.xoauth2_user = xoauth2_user
        self.xoauth2_tokens = xoauth2_tokens
        if xoauth2_user is None:
            # Without the option the mechanism is not offered at all.
            del Handler.auth_XOAUTH2

    async def auth_XOAUTH2(self, server, args):
        """SASL XOAUTH2: base64("user=" U ^A "auth=Bearer " T ^A ^A), initial response."""
        if len(args) > 1:
            blob = args[1]
        else:
            blob = await server.challenge_auth("", encode_to_b64=False)
            if not isinstance(blob, bytes):
                return AuthResult(success=False, handled=True)
            blob = blob.decode()
        try:
            text = base64.b64decode(blob).decode()
        except Exception:
            return AuthResult(success=False, handled=False)
        fields = dict(p.split("=", 1) for p in text.split("\x01") if "=" in p)
        token = fields.get("auth", "").removeprefix("Bearer ")
        try:
            with open(self.xoauth2_tokens) as f:
                valid = {line.strip() for line in f if line.strip()}
        except OSError:
            valid = set()
        ok = fields.get("user") == self.xoauth2_user and token in valid
        return AuthResult(success=ok, handled=False,
                          auth_data=LoginPassword(fields.get("user", "").encode(), b""))

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.no_auth:
            responses = [r for r in responses if not r[4:].upper().startswith("AUTH")]
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        # Postfix's words for a recipient it does not know (local_recipient_maps).
        if address.split("@")[0].startswith("unknown"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown in local recipient table"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        auth = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else session.auth_data
        emit({
            "from": envelope.mail_from,
            "rcpts": envelope.rcpt_tos,
            "data_b64": base64.b64encode(envelope.original_content).decode(),
            "auth": auth,
        })
        return "250 2.0.0 OK queued at aiosmtpd"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--no-auth", action="store_true")
    ap.add_argument("--xoauth2-user")
    ap.add_argument("--xoauth2-tokens")
    args = ap.parse_args()

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.cert, args.key)

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (isinstance(auth_data, LoginPassword)
              and auth_data.login.decode() == args.user
              and auth_data.password.decode() == args.password)
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)

    loop = asyncio.new_event_loop()
    handler = Handler(args.no_auth, args.xoauth2_user, args.xoauth2_tokens)

    def factory():
        return SMTP(
            handler,
            hostname="aiosmtpd.test",
            tls_context=ctx,
            require_starttls=True,
            auth_required=not args.no_auth,
            auth_require_tls=True,
            authenticator=None if args.no_auth else authenticator,
            enable_SMTPUTF8=True,
        )

    server = loop.run_until_complete(loop.create_server(factory, sock=sock))
    emit({"port": sock.getsockname()[1]})

    async def watch_stdin():
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        await reader.read()

    try:
        loop.run_until_complete(watch_stdin())
    finally:
        server.close()


if __name__ == "__main__":
    main()
