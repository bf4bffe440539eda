"""Keyed payload: message ID + secret key → ``n`` bits, with BCH error correction.

Layout of the ``n`` transmitted bits (before scrambling)::

    [ message (message_bits) | BCH parity (m·t bits) | sync zeros (the rest) ]

and the whole word is XOR-ed with a mask drawn from HMAC-SHA256(secret). With
the wrong secret the mask is unrelated to the image, so every bit matches with
probability 1/2: the number of matching bits is Binomial(n, 1/2) whatever the
decoder outputs. That gives exact p-values:

* a **claimed** message (the owner says which ID): ``p = P(Bin(n, ½) ≥ matches)``.
* an **unknown** message (decode whatever is there): the decoded message is the
  best of ``2^message_bits`` hypotheses, so ``p = min(1, 2^message_bits ·
  P(Bin(n, ½) ≥ matches))`` (Bonferroni; valid whichever decoder picked it).

BCH comes from ``bchlib`` (byte-oriented, so ``message_bits`` is a multiple of 8).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import bchlib
import numpy as np

from neuralmark.components.methods.base import InputError, WatermarkKey
from neuralmark.components.stats import binomial_sf


def key_mask(secret: str, n_bits: int, domain: str = "neuralmark/pgd_signer") -> np.ndarray:
    """``n_bits`` pseudo-random bits (uint8 0/1) derived from ``secret`` with HMAC-SHA256."""
    out = bytearray()
    counter = 0
    while len(out) * 8 < n_bits:
        msg = f"{domain}/mask/{counter}".encode()
        out += hmac.new(secret.encode(), msg, hashlib.sha256).digest()
        counter += 1
    return np.unpackbits(np.frombuffer(bytes(out), dtype=np.uint8))[:n_bits]


@dataclass(frozen=True)
class Decoded:
    """Result of reading ``n`` hard bits against a key.

    Attributes:
        message: the message the bits are closest to (claimed, or BCH-decoded).
        matches: bits equal to the expected word for ``message``.
        n_bits: total bits.
        p_value: probability of at least ``matches`` on an unmarked input.
        corrected: bit errors BCH corrected (−1: more than it can correct).
        claimed: whether ``message`` was claimed by the caller.
    """

    message: int | None
    matches: int
    n_bits: int
    p_value: float
    corrected: int
    claimed: bool

    @property
    def bit_accuracy(self) -> float:
        return self.matches / self.n_bits


class PayloadCodec:
    """Encode a keyed message into ``n_bits`` and read it back with a p-value.

    Args:
        n_bits: bits the decoder outputs (32 by default).
        message_bits: bits of user message (0, 8, 16, ...; multiple of 8).
        bch_t: errors BCH corrects in the message+parity part (0 disables BCH).
        domain: separates masks of different methods using the same secret.
    """

    def __init__(self, n_bits: int = 32, message_bits: int = 8, bch_t: int = 2,
                 domain: str = "neuralmark/pgd_signer") -> None:
        if message_bits % 8:
            raise InputError(f"message_bits must be a multiple of 8, got {message_bits}")
        self.n_bits, self.message_bits, self.domain = n_bits, message_bits, domain
        self.bch = None
        ecc_bits = 0
        if message_bits and bch_t:
            m = 5
            while (1 << m) - 1 < message_bits + m * bch_t:
                m += 1
            self.bch = bchlib.BCH(bch_t, m=m)
            ecc_bits = self.bch.ecc_bits
        self.ecc_bits = ecc_bits
        self.code_bits = message_bits + ecc_bits
        if self.code_bits > n_bits:
            raise InputError(
                f"{message_bits} message bits + {ecc_bits} BCH parity bits do not fit in "
                f"{n_bits} bits; lower message_bits or bch_t, or raise n_bits"
            )

    # -- words ---------------------------------------------------------------
    def _check_message(self, message: int | None) -> int:
        message = 0 if message is None else message
        if not 0 <= message < (1 << self.message_bits) and not (self.message_bits == 0
                                                                 and message == 0):
            raise InputError(
                f"message {message} does not fit in {self.message_bits} bits "
                f"(allowed 0..{(1 << self.message_bits) - 1})"
            )
        return message

    def codeword(self, message: int) -> np.ndarray:
        """Unscrambled word (uint8 0/1, length ``n_bits``) for ``message``."""
        word = np.zeros(self.n_bits, dtype=np.uint8)
        if self.message_bits:
            data = int(message).to_bytes(self.message_bits // 8, "big")
            word[: self.message_bits] = np.unpackbits(np.frombuffer(data, np.uint8))
            if self.bch is not None:
                ecc = np.unpackbits(np.frombuffer(bytes(self.bch.encode(data)), np.uint8))
                word[self.message_bits: self.code_bits] = ecc[: self.ecc_bits]
        return word

    def encode(self, key: WatermarkKey) -> np.ndarray:
        """Transmitted bits (uint8 0/1, length ``n_bits``) for ``key``."""
        message = self._check_message(key.message)
        return self.codeword(message) ^ key_mask(key.secret, self.n_bits, self.domain)

    # -- reading -------------------------------------------------------------
    def _bch_decode(self, word: np.ndarray) -> tuple[int, int]:
        """BCH-correct the message part of an unscrambled word → (message, corrected)."""
        nbytes = self.message_bits // 8
        data = bytearray(np.packbits(word[: self.message_bits]).tobytes())
        if self.bch is None:
            return int.from_bytes(bytes(data), "big"), 0
        ecc_bits = np.zeros(self.bch.ecc_bytes * 8, dtype=np.uint8)
        ecc_bits[: self.ecc_bits] = word[self.message_bits: self.code_bits]
        ecc = bytearray(np.packbits(ecc_bits).tobytes())
        nerr = self.bch.decode(bytes(data), bytes(ecc))
        if nerr >= 0:
            self.bch.correct(data, ecc)
        return int.from_bytes(bytes(data[:nbytes]), "big"), nerr

    def read(self, bits: np.ndarray, key: WatermarkKey) -> Decoded:
        """Read hard bits (uint8 0/1, length ``n_bits``) against ``key``."""
        bits = np.asarray(bits, dtype=np.uint8).reshape(-1)
        if bits.size != self.n_bits:
            raise InputError(f"expected {self.n_bits} bits, got {bits.size}")
        mask = key_mask(key.secret, self.n_bits, self.domain)
        if key.message is not None or self.message_bits == 0:
            message = self._check_message(key.message)
            expected = self.codeword(message) ^ mask
            matches = int((bits == expected).sum())
            return Decoded(message if self.message_bits else None, matches, self.n_bits,
                           binomial_sf(matches, self.n_bits), 0, key.message is not None)
        message, corrected = self._bch_decode(bits ^ mask)
        expected = self.codeword(message) ^ mask
        matches = int((bits == expected).sum())
        p = min(1.0, (1 << self.message_bits) * binomial_sf(matches, self.n_bits))
        return Decoded(message, matches, self.n_bits, p, corrected, False)

    def null_p_values(self, bits: np.ndarray, secrets: list[str],
                      claimed: bool = True) -> np.ndarray:
        """p-values of decoded ``bits`` (B×n) against many random keys (B×K).

        The fast path of FPR calibration: one decode per image, then thousands
        of keys. ``claimed=True`` tests the claimed message 0; otherwise the
        unknown-message (Bonferroni) p-value.
        """
        bits = np.asarray(bits, dtype=np.uint8)
        masks = np.stack([key_mask(secret, self.n_bits, self.domain) for secret in secrets])
        if claimed or self.message_bits == 0:
            # vectorised: the expected word of key k is codeword(0) ⊕ mask_k
            expected = self.codeword(0)[None, :] ^ masks                    # k n
            table = np.array([binomial_sf(m, self.n_bits) for m in range(self.n_bits + 1)])
            out = np.empty((bits.shape[0], len(secrets)))
            for j in range(0, len(secrets), 4096):  # chunks bound the b×k×n temporary
                chunk = expected[j:j + 4096]
                out[:, j:j + 4096] = table[(bits[:, None, :] == chunk[None]).sum(-1)]
            return out
        out = np.empty((bits.shape[0], len(secrets)))
        for j, secret in enumerate(secrets):
            key = WatermarkKey(secret, None)
            for i in range(bits.shape[0]):
                out[i, j] = self.read(bits[i], key).p_value
        return out


def key_seed(secret: str, domain: str) -> int:
    """A 63-bit integer seed derived from ``secret`` with HMAC-SHA256 under ``domain``.

    Seeds a ``torch.Generator`` for key-derived tensors (trigger images, kernels,
    projections): the same secret gives the same draws, another secret or another
    domain unrelated ones, and the secret cannot be read back from the seed.
    """
    if not isinstance(secret, str) or not secret:
        raise InputError("a key-derived seed needs a non-empty secret")
    digest = hmac.new(secret.encode(), f"{domain}/seed".encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def key_fingerprint(secret: str, domain: str) -> str:
    """A public 32-hex-digit fingerprint of ``secret`` (HMAC-SHA256 under ``domain``).

    Stored in bundles to tell which key a mark was made for, without the secret.
    """
    return hmac.new(secret.encode(), f"{domain}/fingerprint".encode(),
                    hashlib.sha256).hexdigest()[:32]
