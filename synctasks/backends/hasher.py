# synctasks' hasher for --checksum on hosts with python3 (see remote.sh): the
# SHA-256 of each NUL-separated path on stdin, printed as "sha256sum -z"
# prints it ("<hex>  <path>\0"), byte for byte. hashlib hashes with
# OpenSSL (SHA extensions where the CPU has them) and one process does every
# file: a third less CPU than coreutils' sha256sum on small files. It is
# sent on the script's stdin (no blank lines: one ends it) and runs with
# python3 -c; it must run on any python3 a host may have.
import hashlib
import os
import sys


def digest(fd):
    """The SHA-256 of an open file, read to its end (the client hashes its
    own files with this too: local.sha256_file)."""
    sha = hashlib.sha256()
    # A regular file reads short only at its end: no read of nothing after
    # it (a quarter of the system calls). (64 KiB: a 1 MiB read of a small
    # file costs the allocator an mmap, an mremap and a munmap.)
    chunk = os.read(fd, 65536)
    sha.update(chunk)
    while len(chunk) == 65536:
        chunk = os.read(fd, 65536)
        sha.update(chunk)
    return sha


def main():
    names = sys.stdin.buffer
    out = sys.stdout.buffer
    # O_NONBLOCK: a FIFO swapped in after the listing gives no data, not a hang.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
    rest = b""
    while True:
        block = names.read1(65536)
        paths = (rest + block).split(b"\0")
        rest = paths.pop()
        done = []
        for path in paths:
            try:
                fd = os.open(path, flags)
                try:
                    sha = digest(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                # said, and left without a sum (the file is sent): the exit
                # status stays 0, which says that python3 ran
                sys.stderr.write("sha256: %s: %s\n" % (os.fsdecode(path), exc.strerror))
                continue
            done.append(sha.hexdigest().encode() + b"  " + path + b"\0")
        out.write(b"".join(done))
        if not block:
            out.flush()
            return


if __name__ == "__main__":
    main()
