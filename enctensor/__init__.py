"""enctensor: encrypted, authenticated tensor files that load at the speed of plaintext.

The public API of the package (numpy level); framework adapters live in ``enctensor.torch``
and ``enctensor.tvm``.
"""

from ._api import TensorSlice as TensorSlice
from ._api import inspect as inspect
from ._api import inspect_bytes as inspect_bytes
from ._api import load as load
from ._api import load_bytes as load_bytes
from ._api import rekey as rekey
from ._api import safe_open as safe_open
from ._api import save as save
from ._api import save_bytes as save_bytes
from ._api import verify as verify
from ._core import FORMAT_VERSION as FORMAT_VERSION
from ._core import __version__ as __version__
from ._keys import FileKey as FileKey
from ._keys import Key as Key
from ._keys import KeyProvider as KeyProvider
from ._keys import ed25519_public_text as ed25519_public_text
from ._keys import generate_key as generate_key
from ._keys import load_private_key as load_private_key
from ._keys import load_public_key as load_public_key
from ._keys import read_key_file as read_key_file
from ._keys import x25519_public_text as x25519_public_text
from ._sharded import load_sharded as load_sharded
from .errors import EncTensorError as EncTensorError
from .errors import FormatError as FormatError
from .errors import IntegrityError as IntegrityError
from .errors import ObjectChangedError as ObjectChangedError
from .errors import RemoteReadError as RemoteReadError
from .errors import SignatureError as SignatureError
from .errors import TensorNotFoundError as TensorNotFoundError
from .errors import WrongKeyError as WrongKeyError

__all__ = [
    "FORMAT_VERSION",
    "EncTensorError",
    "FileKey",
    "FormatError",
    "IntegrityError",
    "Key",
    "KeyProvider",
    "ObjectChangedError",
    "RemoteReadError",
    "SignatureError",
    "TensorNotFoundError",
    "TensorSlice",
    "WrongKeyError",
    "__version__",
    "ed25519_public_text",
    "generate_key",
    "inspect",
    "inspect_bytes",
    "load",
    "load_bytes",
    "load_private_key",
    "load_public_key",
    "load_sharded",
    "read_key_file",
    "rekey",
    "safe_open",
    "save",
    "save_bytes",
    "verify",
    "x25519_public_text",
]
