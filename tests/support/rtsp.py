"""An RTSP camera on loopback: GStreamer's RTSP server, run by Debian's /usr/bin/python3.

Started by ``support.servers.RtspServer`` (a venv python cannot import ``gi``), never imported by the
tests. Usage::

    /usr/bin/python3 tests/support/rtsp.py --port 8554 [--fps 15] [--user U --password P]

Serves ``rtsp://127.0.0.1:PORT/live``: a moving ball, 640x480 Motion JPEG over RTP (payload
26), one shared pipeline for every client. Prints ``READY`` once the socket is bound.
"""

from __future__ import annotations

import argparse
import signal
import sys

try:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer
except (ImportError, ValueError) as exc:  # reported by the parent as a RuntimeError
    print(f"IMPORT-ERROR {exc}", flush=True)
    sys.exit(3)

# format=I420 matters: without it the caps between videotestsrc and jpegenc are not fixed
# when the media is prepared and DESCRIBE answers 503
LAUNCH = (
    "( videotestsrc is-live=true pattern=ball "
    "! video/x-raw,format=I420,width={width},height={height},framerate={fps}/1 "
    "! jpegenc quality=80 ! rtpjpegpay name=pay0 pt=26 )"
)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--fps", type=int, default=15)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--user")
    ap.add_argument("--password")
    args = ap.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(LAUNCH.format(width=args.width, height=args.height, fps=args.fps))
    factory.set_shared(True)

    if args.user is not None:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password or ""), token)
        server.set_auth(auth)
        # only the role "user" may see and play the mount; anonymous clients get 401
        perms = GstRtspServer.RTSPPermissions()
        perms.add_role_from_structure(
            Gst.Structure.new_from_string(
                "user, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
            )
        )
        factory.set_permissions(perms)

    server.get_mount_points().add_factory("/live", factory)
    if server.attach(None) == 0:
        print(f"BIND-ERROR cannot listen on 127.0.0.1:{args.port}", flush=True)
        return 2

    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, loop.quit)
    print("READY", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
