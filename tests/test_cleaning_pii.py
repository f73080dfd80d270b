"""PII scrubbing: labelled precision/recall, placeholders, idempotence, real documentation."""

import collections
import time

import pydoc_data.topics
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from t5x_lite.data.cleaning import pii

# (text, [(substring that is personal information, its type), ...]); each substring occurs
# once in its text. Written alongside the detectors, so the scores are optimistic; the last
# twelve positives and seven negatives were written as a held-out probe before the last
# round of fixes: 8 of those 12 were found then, and "git 1.8.3.1" was taken for an IP.
POSITIVES = [
    ("Contact jane.doe@gmail.com for details.", [("jane.doe@gmail.com", "email")]),
    ("Mail me at j.smith+news@outlook.co.uk.", [("j.smith+news@outlook.co.uk", "email")]),
    ("From: Pierre Dupont <pierre.dupont@orange.fr>", [("pierre.dupont@orange.fr", "email")]),
    ("send CVs to hr-team@acme-widgets.io today", [("hr-team@acme-widgets.io", "email")]),
    ("user_123@sub.mail.yahoo.com wrote:", [("user_123@sub.mail.yahoo.com", "email")]),
    ("Reach Ana at ana.lima@uol.com.br, or call.", [("ana.lima@uol.com.br", "email")]),
    ("(priya.k@iitb.ac.in)", [("priya.k@iitb.ac.in", "email")]),
    ("Email: MAX.MUSTERMANN@GMX.DE", [("MAX.MUSTERMANN@GMX.DE", "email")]),
    ("Call +44 20 7946 0958 tomorrow.", [("+44 20 7946 0958", "phone")]),
    ("Our office: (415) 555-2671.", [("(415) 555-2671", "phone")]),
    ("Phone 415-555-2671 or write", [("415-555-2671", "phone")]),
    ("or 415.555.2671 after six", [("415.555.2671", "phone")]),
    ("ring 020 7946 0958 (London)", [("020 7946 0958", "phone")]),
    ("Festnetz: 030 901820 tagsüber", [("030 901820", "phone")]),
    ("Appelez le 01 42 68 53 00 svp", [("01 42 68 53 00", "phone")]),
    ("WhatsApp +91 98765 43210", [("+91 98765 43210", "phone")]),
    ("mobile 98765 43210 (India)", [("98765 43210", "phone")]),
    ("Paris: +33 1 42 68 53 00.", [("+33 1 42 68 53 00", "phone")]),
    ("Ping 8.8.8.8 to test DNS.", [("8.8.8.8", "ip_address")]),
    ("the server at 93.184.216.34 responded", [("93.184.216.34", "ip_address")]),
    ("connected from 2607:f8b0:4005:80a::200e", [("2607:f8b0:4005:80a::200e", "ip_address")]),
    ("DNS 1.1.1.1 and 2606:4700:4700::1111",
     [("1.1.1.1", "ip_address"), ("2606:4700:4700::1111", "ip_address")]),
    ("Failed login from 185.220.101.4.", [("185.220.101.4", "ip_address")]),
    ("GET [2a00:1450:4001:82b::200e]:443", [("2a00:1450:4001:82b::200e", "ip_address")]),
    ("Card: 4111 1111 1111 1111, exp 12/27", [("4111 1111 1111 1111", "credit_card")]),
    ("number 4012888888881881 on file", [("4012888888881881", "credit_card")]),
    ("MC 5555-5555-5555-4444 declined", [("5555-5555-5555-4444", "credit_card")]),
    ("Amex 3782 822463 10005 ok", [("3782 822463 10005", "credit_card")]),
    ("amex:371449635398431", [("371449635398431", "credit_card")]),
    ("Discover 6011 1111 1111 1117.", [("6011 1111 1111 1117", "credit_card")]),
    ("paid with 5105 1051 0510 5100.", [("5105 1051 0510 5100", "credit_card")]),
    ("Pay to GB82 WEST 1234 5698 7654 32 now", [("GB82 WEST 1234 5698 7654 32", "iban")]),
    ("Konto DE89 3704 0044 0532 0130 00.", [("DE89 3704 0044 0532 0130 00", "iban")]),
    ("IBAN: FR1420041010050500013M02606", [("FR1420041010050500013M02606", "iban")]),
    ("rekening NL91ABNA0417164300", [("NL91ABNA0417164300", "iban")]),
    ("cuenta ES91 2100 0418 4502 0005 1332;", [("ES91 2100 0418 4502 0005 1332", "iban")]),
    ("Konto CH93 0076 2011 6238 5295 7", [("CH93 0076 2011 6238 5295 7", "iban")]),
    ("Ship to: 1600 Amphitheatre Parkway, Mountain View, CA 94043 today",
     [("1600 Amphitheatre Parkway, Mountain View, CA 94043", "street_address")]),
    ("He lives at 221B Baker Street\nLondon\nNW1 6XE.",
     [("221B Baker Street\nLondon\nNW1 6XE", "street_address")]),
    ("Office: 350 Fifth Avenue, New York, NY 10118",
     [("350 Fifth Avenue, New York, NY 10118", "street_address")]),
    ("Write to 10 Downing Street, London SW1A 2AA.",
     [("10 Downing Street, London SW1A 2AA", "street_address")]),
    ("Send checks to 123 Main Street, Springfield, IL 62701.",
     [("123 Main Street, Springfield, IL 62701", "street_address")]),
    ("Mrs Jones, 42 Elm Road, Cambridge CB1 2AB",
     [("42 Elm Road, Cambridge CB1 2AB", "street_address")]),
    ("write to m.rossi@libero.it", [("m.rossi@libero.it", "email")]),
    ("tel: 212-555-0187", [("212-555-0187", "phone")]),
    ("call 1-800-275-2273 toll free", [("1-800-275-2273", "phone")]),
    ("HQ +1 (650) 253-0000", [("+1 (650) 253-0000", "phone")]),
    ("Büro +49 89 636 48018", [("+49 89 636 48018", "phone")]),
    ("host 151.101.1.69 answered", [("151.101.1.69", "ip_address")]),
    ("visa 4242424242424242", [("4242424242424242", "credit_card")]),
    ("IBAN IT60 X054 2811 1010 0000 0123 456", [("IT60 X054 2811 1010 0000 0123 456", "iban")]),
    ("1 Infinite Loop, Cupertino, CA 95014",
     [("1 Infinite Loop, Cupertino, CA 95014", "street_address")]),
    ("at 500 W 2nd St, Austin, TX 78701", [("500 W 2nd St, Austin, TX 78701", "street_address")]),
    # Known misses (pyap wants a postcode; it has no post-directions such as "NW").
    ("4 Privet Drive, Little Whinging, Surrey",
     [("4 Privet Drive, Little Whinging, Surrey", "street_address")]),
    ("1600 Pennsylvania Avenue NW, Washington, DC 20500",
     [("1600 Pennsylvania Avenue NW, Washington, DC 20500", "street_address")]),
]

# Text that looks like personal information and is not (or identifies nobody).
NEGATIVES = [
    "Python 3.11.4 was released in June.",
    "Upgrade to v1.2.3 now.",
    "pip install numpy==1.26.4",
    "version 1.2.3.4 is out",  # a dotted quad right after "version" is a version
    "__version__ = '3.5.0.1'",
    "See section 3.3.2.3 of the spec.",
    "Meeting on 2023-01-15 at 12:30:45.",
    "Born 15/01/2023, registered 01/15/2023 09:00.",
    "logged 2023-01-15T12:30:45.123456+00:00",
    "commit 3f2a9c1e7b4d5e6f8a9b0c1d2e3f4a5b6c7d8e9f",
    "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "uuid 550e8400-e29b-41d4-a716-446655440000",
    "x = 1234567890",
    "for i in range(10000000):",
    "ptr = 0x7fff5fbff8c8",
    "eps = 1e-12",
    "evens = a[::2]",
    "std::vector<int> v;",
    "y = a[1:2, ::3]",
    "pi = 3.14159265358979",
    "MAX = 2147483647",
    "n = 9007199254740993",
    "values 0.15126730, 0.23068496, 0.45905553",
    "z = 4 - 239960000 * x",
    "ISBN 0-486-45353-7 and ISSN 0895-4798",
    "Boston, MA 02110-1301 USA",
    "Proc. 30 (1981) 267-283.",
    "Email alice@example.com or bob@mail.example.org",
    "test@foo.test and root@localhost and x@host.invalid",
    "reply to user@example.net or ops@corp.example",
    "@property decorates; a @ b multiplies",
    "localhost is 127.0.0.1 and ::1",
    "router 192.168.0.1, vpn 10.0.0.1",
    "docs use 192.0.2.1, 198.51.100.7 and 2001:db8::1",
    "listen on 0.0.0.0 with netmask 255.255.255.0",
    "link-local fe80::1ff:fe23:4567:890a",
    "MAC 00:1A:2B:3C:4D:5E",
    "bad card 4111 1111 1111 1112",
    "bad IBAN GB82 WEST 1234 5698 7654 33",
    "12 Main Street Blues is a song.",
    "price: $1,299.99",
    "coordinates 40.7128, -74.0060",
    "    1  2  3  4  5  6  7\n    8  9 10 11 12 13 14",
    "matrix [[10 11 12 13 14]\n [15 16 17 18 19]]",
    "git 1.8.3.1 and kernel 5.15.0-91-generic",
    "TEST-NET-3 is 203.0.113.9; ff02::1 is all nodes",
    "IPv4 172.16.254.1 and PCI 0000:00:1f.2",
    "arXiv:2305.12345, page 1234-5678",
    "lat 51.5074 lon -0.1278",
    "sizes 1024 2048 4096 8192",
    "phone_number = '555-0100'",
]


def _labelled_spans(text, labels):
    return {(text.index(s), text.index(s) + len(s), t) for s, t in labels}


def _score():
    """Per-type and overall (true positives, predicted, expected) over the labelled set."""
    tallies = collections.defaultdict(lambda: [0, 0, 0])
    mistakes = []
    for text, labels in POSITIVES + [(t, []) for t in NEGATIVES]:
        expected = _labelled_spans(text, labels)
        predicted = {(s.start, s.end, s.type) for s in pii.find(text)}
        for name in {t for *_, t in expected | predicted} | {"overall"}:
            e = {x for x in expected if name in ("overall", x[2])}
            p = {x for x in predicted if name in ("overall", x[2])}
            tally = tallies[name]
            tally[0] += len(e & p)
            tally[1] += len(p)
            tally[2] += len(e)
        mistakes += [(text, "missed", text[a:b]) for a, b, _ in expected - predicted]
        mistakes += [(text, "wrong", text[a:b], t) for a, b, t in predicted - expected]
    return tallies, mistakes


def test_labelled_set_is_big_enough():
    assert len(POSITIVES) >= 40 and len(NEGATIVES) >= 40
    assert {t for _, labels in POSITIVES for _, t in labels} == set(pii.PII_TYPES)


def test_precision_and_recall():
    tallies, mistakes = _score()
    for mistake in mistakes:
        print("pii mistake:", mistake)
    for name, (hits, predicted, expected) in sorted(tallies.items()):
        precision, recall = hits / max(predicted, 1), hits / max(expected, 1)
        print(f"pii {name:>14}: precision {precision:.3f} recall {recall:.3f} "
              f"({hits} right of {predicted} found, {expected} labelled)")
        if name != "overall":
            assert precision >= 0.85 and recall >= 0.75, (name, mistakes)
    hits, predicted, expected = tallies["overall"]
    assert hits / predicted >= 0.95 and hits / expected >= 0.9, mistakes


def test_spans_are_sorted_and_disjoint():
    text = " ".join(text for text, _ in POSITIVES)
    spans = pii.find(text)
    assert len(spans) >= 0.9 * sum(len(labels) for _, labels in POSITIVES)
    assert all(a.end <= b.start for a, b in zip(spans, spans[1:]))


def test_scrub_replaces_spans_with_placeholders_and_counts_them():
    text = (
        "Hi, I'm Jane (jane.doe@gmail.com, +44 20 7946 0958). Please wire the money to "
        "DE89 3704 0044 0532 0130 00 or charge 4111 1111 1111 1111. My server is 8.8.8.8; "
        "the docs use 192.0.2.1 and alice@example.com. Python 3.11.4, 2023-01-15."
    )
    scrubbed, counts = pii.scrub(text)
    assert scrubbed == (
        "Hi, I'm Jane (<EMAIL>, <PHONE>). Please wire the money to "
        "<IBAN> or charge <CREDIT_CARD>. My server is <IP_ADDRESS>; "
        "the docs use 192.0.2.1 and alice@example.com. Python 3.11.4, 2023-01-15."
    )
    assert counts == {
        "email": 1, "phone": 1, "ip_address": 1, "credit_card": 1, "iban": 1, "street_address": 0,
    }
    assert pii.scrub("nothing here")[1] == dict.fromkeys(pii.PII_TYPES, 0)


def test_address_placeholder():
    scrubbed, counts = pii.scrub("Office: 350 Fifth Avenue, New York, NY 10118. Come by.")
    assert scrubbed == "Office: <ADDRESS>. Come by." and counts["street_address"] == 1


def test_only_configured_types_are_scrubbed():
    config = pii.PiiConfig(types=("email",))
    scrubbed, counts = pii.scrub("jane.doe@gmail.com, 8.8.8.8, +44 20 7946 0958", config)
    assert scrubbed == "<EMAIL>, 8.8.8.8, +44 20 7946 0958"
    assert counts == {"email": 1}


def test_phone_regions_decide_national_formats():
    text = "ring 020 7946 0958 or +1 415 555 2671"
    us_only = pii.PiiConfig(types=("phone",), phone_regions=("US",))
    assert [text[s.start:s.end] for s in pii.find(text, us_only)] == ["+1 415 555 2671"]


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="'ssn'.*email"):
        pii.PiiConfig(types=("email", "ssn"))
    with pytest.raises(ValueError, match="phone region"):
        pii.PiiConfig(phone_regions=("XX",))
    with pytest.raises(ValueError, match="address country"):
        pii.PiiConfig(address_countries=("FR",))


_PII = [s for _, labels in POSITIVES for s, _ in labels]
_FRAGMENTS = _PII + NEGATIVES + list(pii.PLACEHOLDERS.values())
_GLUE = st.text(alphabet=" \n.,:;-+()[]@<>_/0123456789abcdefXYZ", max_size=6)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(_FRAGMENTS), _GLUE), max_size=10).map("".join))
@example("1 Infinite Loop, Cupertino, CA 95014jane.doe@gmail.comj.smith+news@outlook.co.uk"
         "+44 20 7946 0958+44 20 7946 0958")  # each removal exposes the next detection
def test_scrub_is_idempotent(text):
    once, _ = pii.scrub(text)
    twice, counts = pii.scrub(once)
    assert twice == once
    assert sum(counts.values()) == 0


def test_python_documentation_has_almost_no_pii():
    topics = pydoc_data.topics.topics
    start = time.perf_counter()
    found = {name: pii.find(text) for name, text in topics.items()}
    seconds = time.perf_counter() - start
    chars = sum(map(len, topics.values()))
    print(f"pii on pydoc topics: {len(topics)} docs, {chars} chars in {seconds:.3f}s: "
          f"{len(topics) / seconds:.0f} docs/s, {chars / seconds / 1e6:.2f} MB/s")
    spans = [(name, s.type, topics[name][s.start:s.end]) for name, ss in found.items() for s in ss]
    for span in spans:
        print("pii in pydoc topics:", span)
    assert len(spans) < len(topics) / 50, spans
