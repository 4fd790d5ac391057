"""Private set intersection of sample IDs between the host and its collaborators.

**Group and hash.** Curve25519 in X25519 form: a point is its 32-byte u-coordinate. An ID
``x`` (compared as ``str(x)``, UTF-8) is encoded by RFC 9380's suite
``curve25519_XMD:SHA-512_ELL2_NU_``: ``u = hash_to_field(x)`` (``expand_message_xmd``
with SHA-512, 48 bytes reduced mod p), then Elligator 2 (``map_to_curve_elligator2``,
Monocypher's ``crypto_elligator_map``) gives a point ``Q(x)`` *on the curve*, never on its
twist. The suite's last step, ``clear_cofactor`` (times 8), is left to the first
multiplication: X25519 clamps every key ``k`` to a multiple of 8, so ``x(kQ) = x(k'H(x))``
with ``H(x) = 8Q(x)`` the suite's output, a point of the prime-order subgroup, and
``k' = k/8``. Blinding is X25519 (libsodium's ``crypto_scalarmult_curve25519``); it
commutes: ``x(a(bH)) = x(b(aH))``. Keys are 32 bytes from ``secrets`` (the OS CSPRNG); the
effective keys ``k' = 2^251 + t`` (``t < 2^251``) are distinct and nonzero modulo the group
order, so a key is uniform on half of the group's scalars. Every secret order is an argsort
of CSPRNG keys.

**Why this is sound.** Every value on the wire is ``x(kP)`` for a key ``k`` and a point
``P`` of the prime-order subgroup (the clamping removed ``Q``'s small-order part), so it
carries no twist or cofactor bit of ``H(x)``: the flaw of the earlier map (SHA-512 used as a
u-coordinate directly lands on the twist half the time, and scalar multiplication keeps
that visible). The comparison is exact: ``x(P) = x(P')`` only for ``P' = +-P``, and
``x(kP)`` is a bijection of the subgroup's u-coordinates, so two blinded values are equal
exactly when the IDs' ``H`` are equal up to sign, for distinct IDs a chance of about
``2^-250`` per pair. With one collaborator the host compares 16-byte prefixes of these
uniform values: a false match has a chance of ``2^-128`` per pair (``2^-88`` for a million
IDs on each side). ``H`` is RFC 9380's nonuniform encoding, not its random-oracle
``hash_to_curve``: each subgroup point has a bounded number (at most 16) of preimages ``u``
and Elligator 2 inverts efficiently, so a security reduction can program ``H`` with any
challenge point re-randomized until it has a preimage (an expected factor 2 in running time),
the standard argument for such weak encodings in Diffie-Hellman protocols. Points from a
peer are checked to be canonical u-coordinates; they need no curve check, since X25519 is
twist-secure and its clamped keys annihilate the small subgroups of both the curve and the
twist (a small-order input gives the all-zero result, which is refused). A peer's bad point
can therefore only spoil its own results.

**Two parties** (host ``h`` with key ``a``, one collaborator ``c0`` with key ``b``): 4n
multiplications. The host streams ``aH(x)`` (its IDs in a secret order) to ``c0``, which
returns the first 16 bytes of each ``baH(x)`` chunk by chunk (the host only compares them);
``c0`` streams ``bH(y)`` (its IDs in a secret order) to the host, which computes ``abH(y)``.
Both directions share each message, and the host computes while ``c0`` does (the first
message only asks for ``c0``'s first chunk, so both start at once). The host compares the
two lists, learns the intersection, and sends ``c0`` the *positions* of the common elements
in ``c0``'s list.

**m >= 2 collaborators**: every party's set travels a chain of blinding hops (``c_k``: its
own key, the host's ``s_0`` with a shuffle, then ``c_{k+1}`` ... ``c_{k-1}`` each blinding
and shuffling, and finally the host's second key ``u_0``; the host's chain: ``s_0`` and
``u_0``, then ``c_0`` ... ``c_{m-1}``). The host compares the fully blinded lists; positions
travel each chain backwards, each hop undoing its shuffle, until the owner resolves them.

**What each party learns** (semi-honest parties that do not collude): the intersection and
every set's size; the host also the sizes of the intersections between any parties' sets
when m >= 2. Messages carry blinded points and positions only: no ID, no ``Q(x)`` or ``H(x)``.

**What a collaborator enforces** (``collaborator_step``) against a host that deviates: one
``start`` per task; the set sizes announced once, its own size matching; only the chains
the protocol routes through it (``h`` and the other collaborators' ``c_j``), each blinded
once and never beyond its announced size; its own list sent once; shuffled output drained
and unshuffled once; positions unique, in range and no more than the smallest set; no key
it does not know. Any other request is refused with ``PsiRefused``, logged, and ends this
collaborator's PSI for the task (every later request is refused too). A host can therefore
test at most as many candidate IDs as the sizes it announced, which every collaborator sees:
the limit of any PSI, whose inputs are the parties' own choice.

``run_psi`` drives the protocol from the host over an ``exchange`` callback;
``collaborator_step`` answers one request. Both are transport-agnostic: requests and
replies hold ints, booleans, arrays and ``{name: array}`` maps, as the payload codec carries
them in Flower records. Arrays travel in chunks of ``CHUNK`` points (4 MiB, below Flower's
5 MiB array-chunk size), so each chunk is one Flower object.
"""

from alphafed_flwr.psi_collaborator import collaborator_step
from alphafed_flwr.psi_core import (
    CHUNK,
    DST,
    PsiError,
    PsiParty,
    PsiRefused,
    canonical_ids,
    expand_message_xmd,
    hash_to_field,
    hash_to_point,
    map_to_curve,
    multiply,
)
from alphafed_flwr.psi_host import run_psi

__all__ = [
    "CHUNK", "DST", "PsiError", "PsiParty", "PsiRefused", "canonical_ids", "collaborator_step",
    "expand_message_xmd", "hash_to_field", "hash_to_point", "map_to_curve", "multiply", "run_psi",
]
