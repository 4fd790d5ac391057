"""Private set intersection of sample IDs between the host and its collaborators.

**Group and hash.** ristretto255 (RFC 9496), the prime-order group built on Curve25519,
through libsodium (the ``rbcl`` binding). An ID ``x`` (compared as ``str(x)``, UTF-8) is
mapped to ``H(x)`` by RFC 9380's ``hash_to_ristretto255`` (``expand_message_xmd`` with
SHA-512, then RFC 9496's one-way map), a random oracle into the group. Blinding is scalar
multiplication, which commutes: ``a(bH(x)) = b(aH(x))``. Keys are uniform nonzero scalars
from ``secrets`` (the OS CSPRNG); every secret order is an argsort of CSPRNG keys.

**Two parties** (host ``h`` with key ``a``, one collaborator ``c0`` with key ``b``): 4n
multiplications. The host streams ``aH(x)`` (its IDs in a secret order) to ``c0``, which
returns ``baH(x)`` chunk by chunk; ``c0`` streams ``bH(y)`` (its IDs in a secret order) to
the host, which computes ``abH(y)``. Both directions share each message, and the host
computes while ``c0`` does. The host compares the two lists, learns the intersection, and
sends ``c0`` the *positions* of the common elements in ``c0``'s list.

**m >= 2 collaborators**: every party's set travels a chain of blinding hops (``c_k``: its
own key, the host's ``s_0`` with a shuffle, then ``c_{k+1}`` ... ``c_{k-1}`` each blinding
and shuffling, and finally the host's second key ``u_0``; the host's chain: ``s_0`` and
``u_0``, then ``c_0`` ... ``c_{m-1}``). The host compares the fully blinded lists; positions
travel each chain backwards, each hop undoing its shuffle, until the owner resolves them.

**What each party learns** (semi-honest parties that do not collude): the intersection and
every set's size; the host also the sizes of the intersections between any parties' sets
when m >= 2. Messages carry group elements and positions only: no ID, no ``H(x)``.

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
    hash_to_point,
    multiply,
)
from alphafed_flwr.psi_host import run_psi

__all__ = [
    "CHUNK", "DST", "PsiError", "PsiParty", "PsiRefused", "canonical_ids", "collaborator_step",
    "expand_message_xmd", "hash_to_point", "multiply", "run_psi",
]
