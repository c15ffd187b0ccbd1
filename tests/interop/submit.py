#!/usr/bin/env python3
"""Submits mail to mailgate with Python's smtplib (software nobody on the project wrote)
and prints one JSON object per message: {"token", "code", "reply"}.

usage: submit.py PORT smtplib|pipelined
"""
import json
import smtplib
import socket
import sys
from email.message import EmailMessage


def smtplib_mode(port):
    with smtplib.SMTP("127.0.0.1", port, local_hostname="py-client.test", timeout=30) as s:
        s.ehlo()
        for n, subject in enumerate(["Plain ASCII", "Grüße aus Köln"]):
            token = f"PY-{n}"
            msg = EmailMessage()
            msg["From"] = "Scanner <scan@printer.local>"
            msg["To"] = "a@contoso.com, b@contoso.com"
            msg["Subject"] = subject
            msg.set_content(f"{token}\n.line starting with a dot\nÜmlaut body\n")
            msg.add_attachment(b"%PDF-1.4 fake", maintype="application", subtype="pdf",
                               filename="scan.pdf")
            code, _ = s.mail("scan@printer.local")
            assert code == 250, code
            for rcpt in ("a@contoso.com", "b@contoso.com"):
                code, _ = s.rcpt(rcpt)
                assert code == 250, code
            code, reply = s.data(msg.as_bytes())
            print(json.dumps({"token": token, "code": code, "reply": reply.decode(),
                              "subject": subject}))


def read_reply(f):
    lines = []
    while True:
        line = f.readline().decode()
        if not line:
            raise EOFError("connection closed")
        lines.append(line.rstrip("\r\n"))
        if line[3:4] != "-":
            return lines


def pipelined_mode(port):
    """One packet carrying two whole transactions and QUIT, after EHLO says PIPELINING."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    f = sock.makefile("rb")
    read_reply(f)
    sock.sendall(b"EHLO py-pipe.test\r\n")
    ehlo = read_reply(f)
    assert any(l[4:] == "PIPELINING" for l in ehlo), ehlo
    batch = b""
    for n in range(2):
        token = f"PIPE-{n}"
        batch += (b"MAIL FROM:<cron@host.local>\r\nRCPT TO:<ops@contoso.com>\r\nDATA\r\n"
                  + f"Subject: {token}\r\n\r\n{token}\r\n..dotted\r\n.\r\n".encode())
    batch += b"QUIT\r\n"
    sock.sendall(batch)
    replies = [read_reply(f)[-1] for _ in range(2 * 4 + 1)]
    for n in range(2):
        final = replies[n * 4 + 3]
        print(json.dumps({"token": f"PIPE-{n}", "code": int(final[:3]), "reply": final[4:],
                          "all": replies[n * 4:n * 4 + 4]}))
    assert replies[-1].startswith("221"), replies


if __name__ == "__main__":
    port = int(sys.argv[1])
    {"smtplib": smtplib_mode, "pipelined": pipelined_mode}[sys.argv[2]](port)
