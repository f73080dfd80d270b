"""Personal-information scrubbing: replaces contact and payment details with placeholders.

Language models memorise rare strings of their training text and can be made to emit them
verbatim, more so as models grow and as a string is repeated (Carlini et al. 2023,
"Quantifying Memorization Across Neural Language Models"). A pretraining corpus is therefore
scrubbed of what identifies or reaches a person before it is tokenised. Each detector is
built on a maintained library where one exists, so validity rules are not re-invented here:

  email           local@domain.tld, by regular expression.
  phone           `phonenumbers.PhoneNumberMatcher`, leniency VALID: numbers with a leading +
                  in any country, national formats of `PiiConfig.phone_regions`. National
                  numbers need a separator ("(415) 555-2671", "020 7946 0958") and must not
                  look like decimals, dates, ZIP+4 codes, page ranges or ISBN/ISSNs
                  (`stdnum`): in code and papers those outnumber phone numbers by far.
  ip_address      IPv4 / IPv6 candidates by regex, kept if `ipaddress` parses them as globally
                  routable; IPv6 needs at least 3 non-empty groups (so `a[::2]` is not one).
  credit_card     13-19 digits in groups (3+ digits) split by single spaces or hyphens, or
                  15-16 unbroken, starting 2-6 (the issuers' ranges), passing `stdnum.luhn`.
  iban            `stdnum.iban.is_valid` (country length and mod-97 check), with or without
                  spaces between groups of 4.
  street_address  `pyap` (US and GB rules), kept only where it starts at a house number
                  followed within 5 words by a common street type ("Road", "Ave"...). pyap
                  knows full addresses only (street, town, state or postcode): it misses a
                  bare "12 Main St", unusual layouts and post-directions such as "Ave NW".

Addresses reserved for documentation identify nobody and are kept, because scrubbing them
would only damage technical text: e-mail at example.com/.org/.net or the RFC 2606 / 6761
TLDs (.example, .test, .invalid, .localhost; also .local, .localdomain), and IPs that are
not globally routable (loopback, private, link-local, the 192.0.2.0/24 and 2001:db8::/32
documentation blocks...). A dotted quad after "version", "git", "section"... is no IP.
`scrub` is idempotent: placeholders match no detector, and it rescans its own output.
"""
from __future__ import annotations

import bisect
import dataclasses
import ipaddress
import re
from collections.abc import Iterator

import phonenumbers
import pyap
from stdnum import iban, isbn, issn, luhn

PLACEHOLDERS: dict[str, str] = {
    "email": "<EMAIL>", "phone": "<PHONE>", "ip_address": "<IP_ADDRESS>",
    "credit_card": "<CREDIT_CARD>", "iban": "<IBAN>", "street_address": "<ADDRESS>",
}
PII_TYPES: tuple[str, ...] = tuple(PLACEHOLDERS)
ADDRESS_COUNTRIES = ("US", "GB", "CA")  # the countries pyap has rules for

_EMAIL = re.compile(
    r"(?<![\w.%+-])[\w.%+-]+@((?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_]{2,24})(?![\w-]|\.\w)"
)
_RESERVED_TLDS = frozenset({"example", "test", "invalid", "localhost", "local", "localdomain"})
_RESERVED_DOMAINS = ("example.com", "example.org", "example.net")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\w)")
_NOT_IP_BEFORE = re.compile(  # a dotted quad after these is a version or a section number
    r"(?<![a-z])(?:version|release|build|python|git|kernel|firmware|section|chapter|§)[\W_]{0,6}$",
    re.IGNORECASE,
)
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,8}[0-9A-Fa-f]{0,4}(?![\w:]|\.\w)")
_CARD = re.compile(r"(?<![\w.-])(?<!\d )\d(?:[ -]?\d){12,18}(?!\w|[ .-]\d)")
_CARD_SEPARATOR = re.compile(r"[ -]")
_IBAN = re.compile(r"(?<!\w)[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?!\w)")
# Cheap prefilters: phonenumbers and pyap only see the text around these. A run of digits
# that is one plain number or only decimals cannot hold a phone number that passes the
# checks below, and one of over 24 digits is a row of numbers (E.164 allows 15 at most).
_DIGIT_RUN = re.compile(r"\+?\(?\d(?:[ \t().-]{0,3}\d){6,}")
_NUMBERS = re.compile(r"\d+|\d+\.\d+(?:[ \t]+\d+\.\d+)*")
# National-format phone matches that are something else (+numbers are never dropped).
_NOT_PHONE = re.compile(
    r"""[-(\[]?\d+(?:\.\d+)?[)\]]?              # a plain or decimal number
    | [\d.]*(?<!\d)\d(?!\d)[\d.]*                # dotted with a one-digit part: a version
    | \d{1,3}(?:\.\d{1,3}){3} | \d{5}-\d{4}       # an IPv4 address, a US ZIP+4 code
    | (?:\d{4}-\d\d-\d\d|\d\d[-/.]\d\d[-/.]\d{4})(?!\d).*   # starts with a date
    | \((?:19|20)\d\d\).*                          # a cited year, then pages
    | \[.* | .*(?:\s\s|\s-\s|(?<!\d)\d\s\d(?!\d)).*  # an array, table columns, a sum
    | (?=.*\.)(?=.*[\s-]).*                       # decimals among other numbers""",
    re.VERBOSE | re.DOTALL,
)
_BOOK_ID = re.compile(r"\d+-\d+-\d+-\d+|\d{4}-\d{4}")  # ISBN-10 / ISSN layouts
_STREET_HINT = re.compile(
    r"\b\d{1,6}[A-Za-z]?\b(?:[ \t,.]+(?:[A-Za-z][\w'-]*|\d+(?:st|nd|rd|th)\b)){0,5}?[ \t,.]+"
    r"(?i:street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|way|place|pl"
    r"|parkway|pkwy|square|sq|terrace|highway|hwy|circle|close|crescent|grove|row|walk|mews"
    r"|loop|plaza|trail|alley|broadway)\b"
)
# pyap wants a US state code (or a ZIP) or a UK postcode after the street.
_ADDRESS_TAIL = re.compile(
    r"\b(?:A[KLRSZ]|C[AOT]|D[CE]|FL|G[AU]|HI|I[ADLN]|K[SY]|LA|M[ADEINOPST]|N[CDEHJMVY]|O[HKR]|P[AR]"
    r"|RI|S[CD]|T[NX]|UT|V[AIT]|W[AIVY]|\d{5}|[A-Za-z]{1,2}\d[A-Za-z\d]? ?\d[A-Za-z]{2})\b"
)
_SPACE_RUN = re.compile(r"[\s,]+")
# A number glued to a longer token (a float, a hex id, a version) is not a phone number.
_GLUED_BEFORE = re.compile(r"(?:[\w.]|\w-)$")
_GLUED_AFTER = re.compile(r"\w|[.-]\w")
_VALID = phonenumbers.Leniency.VALID


@dataclasses.dataclass(frozen=True)
class PiiConfig:
    """Which detectors run, and the local conventions the phone and address ones assume."""

    types: tuple[str, ...] = PII_TYPES
    # Regions whose national formats are recognised; +numbers are found whatever the region.
    phone_regions: tuple[str, ...] = ("US", "GB", "DE", "FR", "IN")
    # Countries whose street-address rules pyap applies (a subset of ADDRESS_COUNTRIES).
    address_countries: tuple[str, ...] = ("US", "GB")

    def __post_init__(self):
        _check("PII type", self.types, PII_TYPES)
        _check("phone region", self.phone_regions, sorted(phonenumbers.SUPPORTED_REGIONS))
        _check("address country", self.address_countries, ADDRESS_COUNTRIES)


def _check(what: str, given, known) -> None:
    unknown = [name for name in given if name not in known]
    if unknown:
        raise ValueError(f"unknown {what}(s) {unknown}; known: {', '.join(known)}")


@dataclasses.dataclass(frozen=True)
class Span:
    """`text[start:end]` is personal information of kind `type` (a key of PLACEHOLDERS)."""

    start: int
    end: int
    type: str


def _emails(text: str, config: PiiConfig) -> Iterator[tuple[int, int]]:
    for m in _EMAIL.finditer(text):
        domain = m.group(1).lower()
        reserved = any(domain == d or domain.endswith("." + d) for d in _RESERVED_DOMAINS)
        if not reserved and domain.rsplit(".", 1)[-1] not in _RESERVED_TLDS:
            yield m.span()


def _global_ip(candidate: str) -> bool:
    try:
        return ipaddress.ip_address(candidate).is_global
    except ValueError:
        return False


def _ip_addresses(text: str, config: PiiConfig) -> Iterator[tuple[int, int]]:
    for m in _IPV4.finditer(text):
        version = _NOT_IP_BEFORE.search(text, max(0, m.start() - 20), m.start())
        if not version and _global_ip(m.group()):
            yield m.span()
    for m in _IPV6.finditer(text):
        groups = [g for g in m.group().split(":") if g]
        if len(groups) >= 3 and _global_ip(m.group()):
            yield m.span()


def _credit_cards(text: str, config: PiiConfig) -> Iterator[tuple[int, int]]:
    for m in _CARD.finditer(text):
        groups = _CARD_SEPARATOR.split(m.group())
        digits = "".join(groups)
        if len(groups) == 1:  # unbroken runs: only the common lengths, else ids abound
            plausible = len(digits) in (15, 16)
        else:  # groups of 3+ digits, one kind of separator
            separators = set(_CARD_SEPARATOR.findall(m.group()))
            plausible = min(map(len, groups)) >= 3 and len(separators) == 1
        if plausible and digits[0] in "23456" and luhn.is_valid(digits):
            yield m.span()


def _ibans(text: str, config: PiiConfig) -> Iterator[tuple[int, int]]:
    for m in _IBAN.finditer(text):
        if iban.is_valid(m.group()):
            yield m.span()


def _phones(text: str, config: PiiConfig) -> Iterator[tuple[int, int]]:
    for run in _DIGIT_RUN.finditer(text):
        if _NUMBERS.fullmatch(run.group()) or sum(map(str.isdigit, run.group())) > 24:
            continue
        lo, hi = max(0, run.start() - 1), min(len(text), run.end() + 1)
        for region in config.phone_regions:
            for m in phonenumbers.PhoneNumberMatcher(text[lo:hi], region, leniency=_VALID):
                start, end = lo + m.start, lo + m.end
                if _plausible_phone(m.raw_string) and not _glued(text, start, end):
                    yield start, end


def _plausible_phone(raw: str) -> bool:
    if raw.startswith("+"):
        return True
    book = _BOOK_ID.fullmatch(raw) and (isbn.is_valid(raw) or issn.is_valid(raw))
    return not (book or _NOT_PHONE.fullmatch(raw))


def _glued(text: str, start: int, end: int) -> bool:
    before = _GLUED_BEFORE.search(text, max(0, start - 2), start)
    return bool(before or _GLUED_AFTER.match(text, end))


def _street_addresses(text: str, config: PiiConfig) -> Iterator[tuple[int, int]]:
    for hint in _STREET_HINT.finditer(text):
        lo, hi = hint.start(), min(len(text), hint.end() + 120)
        if not _ADDRESS_TAIL.search(text, hint.end(), hi):
            continue
        flat, where = _flatten(text[lo:hi])
        for country in config.address_countries:
            for address in pyap.parse(flat, country=country):
                if address.match_start == 0:  # it starts at the house number of the hint
                    end = lo + where[address.match_end]
                    yield lo, lo + len(text[lo:end].rstrip(" ,\t\r\n"))


def _flatten(text: str) -> tuple[str, list[int]]:
    """pyap's whitespace clean-up done here, recording where each character came from.

    A run of whitespace and commas becomes ", " if it holds a comma or newline, else " ";
    pyap leaves such text unchanged, so its match offsets index it, and `where` maps them back.
    """
    pieces, where, pos = [], [], 0
    for m in _SPACE_RUN.finditer(text):
        separator = ", " if ("," in m.group() or "\n" in m.group()) else " "
        pieces += [text[pos:m.start()], separator]
        where += [*range(pos, m.start()), *[m.start()] * len(separator)]
        pos = m.end()
    pieces.append(text[pos:])
    where += [*range(pos, len(text) + 1)]
    return "".join(pieces), where


_DETECTORS = {
    "email": _emails, "phone": _phones, "ip_address": _ip_addresses,
    "credit_card": _credit_cards, "iban": _ibans, "street_address": _street_addresses,
}
_RANK = {name: i for i, name in enumerate(PII_TYPES)}


def find(text: str, config: PiiConfig = PiiConfig()) -> list[Span]:
    """The personal information in `text`: sorted, non-overlapping spans.

    Where detections overlap the longer wins, then the earlier, then the type listed first
    in PII_TYPES, so the result does not depend on the order detectors run in.
    """
    kinds = dict.fromkeys(config.types)
    found = {Span(s, e, kind) for kind in kinds for s, e in _DETECTORS[kind](text, config)}
    starts: list[int] = []
    kept: list[Span] = []
    for span in sorted(found, key=lambda s: (s.start - s.end, s.start, _RANK[s.type])):
        i = bisect.bisect(starts, span.start)
        if (i and kept[i - 1].end > span.start) or (i < len(kept) and kept[i].start < span.end):
            continue
        starts.insert(i, span.start)
        kept.insert(i, span)
    return kept


def scrub(text: str, config: PiiConfig = PiiConfig()) -> tuple[str, dict[str, int]]:
    """`text` with each span of `find` replaced by its placeholder, and per-type counts.

    The counts have every configured type as a key, 0 where none was found, so they sum over
    a corpus into a complete report. Replacing a span can expose a shorter one it overlapped
    (a postcode glued to an e-mail's local part), so the output is scanned again until clean.
    That ends: each span holds a digit, "@" or ":", which placeholders lack.
    """
    counts = dict.fromkeys(config.types, 0)
    while spans := find(text, config):
        pieces, pos = [], 0
        for span in spans:
            pieces += [text[pos:span.start], PLACEHOLDERS[span.type]]
            counts[span.type] += 1
            pos = span.end
        text = "".join(pieces) + text[pos:]
    return text, counts
