"""Large messages for the Graph draft tests, written and read by Python's email package
(software nobody here wrote).

  graph_large.py make OUT PDF_BYTES        a message with a text and an HTML body, an
                                           inline PNG (cid:logo@erp.local) and a PDF
  graph_large.py compare ORIGINAL DRAFT UPLOADED.json
      checks that the draft's MIME plus the uploaded attachments hold the same parts as
      the original: every leaf's content type, file name, content id and decoded bytes,
      and the original's headers in the draft. UPLOADED.json: [{"item": AttachmentItem,
      "file": path of its bytes}]. Prints "same parts: N" or exits 1 naming the difference.
"""
import json
import random
import sys
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser


def make(out, pdf_bytes):
    rnd = random.Random(4711)
    pdf = b"%PDF-1.4\n" + rnd.randbytes(pdf_bytes - 9)
    png = b"\x89PNG\r\n\x1a\n" + rnd.randbytes(6000)
    m = EmailMessage()
    m["From"] = "ERP <erp@contoso.com>"
    m["To"] = "Customer <a@contoso.com>"
    m["Subject"] = "Statement 4711 with the scanned contract"
    m["Message-ID"] = "<stmt-4711@erp.local>"
    m["Date"] = "Thu, 03 Dec 2026 10:00:00 +0000"
    m.set_content("Dear customer,\n\nyour statement is attached.\n")
    m.add_alternative(
        '<html><body><p>Dear customer,</p><img src="cid:logo@erp.local"></body></html>',
        subtype="html",
    )
    m.get_payload()[1].add_related(png, "image", "png", cid="<logo@erp.local>")
    m.add_attachment(pdf, maintype="application", subtype="pdf", filename="statement-4711.pdf")
    with open(out, "wb") as f:
        f.write(m.as_bytes(policy=policy.SMTP))


def leaves(msg):
    out = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        cid = (part.get("Content-ID") or "").strip("<> ") or None
        out.append((part.get_content_type(), part.get_filename(), cid, part.get_payload(decode=True)))
    return out


def compare(original, draft, uploaded):
    parse = BytesParser(policy=policy.default)
    with open(original, "rb") as f:
        orig = parse.parse(f)
    with open(draft, "rb") as f:
        dr = parse.parse(f)
    for h in ("From", "To", "Subject", "Message-ID", "Date"):
        if str(orig[h]) != str(dr[h]):
            sys.exit(f"header {h}: {orig[h]!r} became {dr[h]!r}")
    got = leaves(dr)
    inline = {}
    for u in json.load(open(uploaded)):
        item = u["item"]
        with open(u["file"], "rb") as f:
            data = f.read()
        if item["size"] != len(data):
            sys.exit(f"{item['name']}: size {item['size']} but {len(data)} bytes uploaded")
        cid = item.get("contentId")
        got.append((item["contentType"], item["name"], cid, data))
        inline[item["name"]] = item["isInline"]
    want = leaves(orig)
    for w in want:
        if w in got:
            got.remove(w)
        else:
            sys.exit(f"part {w[:3]} ({len(w[3])} bytes) is missing or changed")
    if got:
        sys.exit(f"parts the original does not have: {[g[:3] for g in got]}")
    for part in orig.walk():
        name = part.get_filename()
        if name in inline:
            want_inline = part.get_content_disposition() == "inline" or (
                part.get_content_disposition() is None and part.get("Content-ID") is not None
            )
            if inline[name] != want_inline:
                sys.exit(f"{name}: isInline {inline[name]}, the original says {want_inline}")
    print(f"same parts: {len(want)}")


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], int(sys.argv[3]))
    else:
        compare(sys.argv[2], sys.argv[3], sys.argv[4])
