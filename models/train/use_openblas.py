"""Import this before torch: Debian's python3-torch calls the system libblas.so.3, which defaults to the
reference BLAS (about 10x slower).  If Debian's OpenBLAS is installed (libopenblas0-pthread), re-exec the
current script with it first on LD_LIBRARY_PATH (single-threaded unless OPENBLAS_NUM_THREADS is set).
Set NO_OPENBLAS=1 to disable."""
import os
import sys

_OB = '/usr/lib/x86_64-linux-gnu/openblas-pthread'
if os.path.isdir(_OB) and _OB not in os.environ.get('LD_LIBRARY_PATH', '') and not os.environ.get('NO_OPENBLAS') \
        and 'torch' not in sys.modules:
    env = dict(os.environ, LD_LIBRARY_PATH=_OB + ':' + os.environ.get('LD_LIBRARY_PATH', ''))
    env.setdefault('OPENBLAS_NUM_THREADS', '1')
    os.execve(sys.executable, [sys.executable] + sys.argv, env)
