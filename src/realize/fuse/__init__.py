"""
The FUSE view of every arena (DESIGN.md section 10, "FUSE bridge").

    - L{realize.fuse.backend}: the L{FuseBackend} Protocol the daemon
      implements (cache tables, blobs, downloader), and its value types.
    - L{realize.fuse.ops}: the adapter from libfuse's calls to a backend
      (handles, attributes, xattrs, the errno table).
    - L{realize.fuse.libfuse}: the mfusepy glue (readdirplus, C{struct
      stat}, invalidation); the only module that loads libfuse.
    - L{realize.fuse.bridge}: calls from FUSE threads into the reactor,
      with a deadline and a shutdown path.
    - L{realize.fuse.service}: the mount as a Twisted service.
    - L{realize.fuse.memory}: an in-memory backend, for tests and benchmarks.
"""
