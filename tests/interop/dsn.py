"""Reads delivery status notifications (RFC 3464) with Python's own email package and
prints what a program reading them would see, as JSON: one object per file given.

Usage: dsn.py FILE...
"""
import email
import email.policy
import json
import sys

out = []
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        msg = email.message_from_binary_file(f, policy=email.policy.default)
    parts = msg.get_payload() if msg.is_multipart() else []
    found = {
        "content_type": msg.get_content_type(),
        "report_type": msg.get_param("report-type"),
        "auto_submitted": msg["Auto-Submitted"],
        "from": msg["From"],
        "to": msg["To"],
        "subject": msg["Subject"],
        "parts": [p.get_content_type() for p in parts],
        "defects": [type(d).__name__ for d in msg.defects],
    }
    if len(parts) == 3:
        found["text"] = parts[0].get_content()
        # message/delivery-status: the package parses it into header blocks, the first
        # per message, then one per recipient.
        blocks = parts[1].get_payload()
        found["per_message"] = dict(blocks[0].items())
        found["recipients"] = [dict(b.items()) for b in blocks[1:]]
        headers = parts[2].get_payload()
        found["original_headers"] = headers if isinstance(headers, str) else str(headers)
    out.append(found)
print(json.dumps(out))
