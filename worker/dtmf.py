"""The DTMF alphabet: the sixteen telephone keys, in RFC 4733 event-code order.

``DTMF_DIGITS[code]`` is the key of telephone-event ``code`` (0-9, ``*`` = 10,
``#`` = 11, ``A``-``D`` = 12-15); the RTVI ``dtmf`` message, SIP INFO and RTP
telephone-events all accept exactly these keys.
"""

from __future__ import annotations

__all__ = ["DTMF_DIGITS", "is_dtmf_digit"]

DTMF_DIGITS = "0123456789*#ABCD"


def is_dtmf_digit(key: object) -> bool:
    """True for a one-character string naming a telephone key."""
    return isinstance(key, str) and len(key) == 1 and key in DTMF_DIGITS
