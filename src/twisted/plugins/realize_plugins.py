"""
twistd plugins: C{twistd -n realized ...}, C{twistd -n realize-move ...} and
C{twistd -n realize-history ...}.
"""

from twisted.application.service import ServiceMaker

realized = ServiceMaker(
    "realized",
    "realize.tap.realized",
    "realize daemon: serve this peer's arenas over AMP/TLS",
    "realized",
)
realize_move = ServiceMaker(
    "realize-move",
    "realize.tap.move",
    "move the files of arenas from one peer to another",
    "realize-move",
)
realize_history = ServiceMaker(
    "realize-history",
    "realize.tap.history",
    "print the notifications of a peer's history, as JSON lines",
    "realize-history",
)
