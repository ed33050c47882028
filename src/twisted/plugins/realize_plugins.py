"""
twistd plugins: C{twistd -n realized ...} and C{twistd -n realize-move ...}.
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
