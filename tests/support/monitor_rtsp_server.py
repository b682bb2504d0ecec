"""A real RTSP server (GStreamer's gst-rtsp-server, Debian packages) for the monitor's tests.

Run with the *system* Python, which has PyGObject (python3-gi, gir1.2-gst-rtsp-server-1.0):

    /usr/bin/python3 tests/support/monitor_rtsp_server.py PORT

It serves rtsp://127.0.0.1:PORT/cam: a live 160 x 120 test picture (a moving ball, so frames are
never identical) at 10 fps, Motion-JPEG over RTP. It prints "ready" once listening and runs
until killed.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

PIPELINE = ("( videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width=160,height=120,framerate=10/1 "
            "! jpegenc quality=90 ! rtpjpegpay name=pay0 pt=26 )")


def main() -> None:
    port = sys.argv[1]
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(PIPELINE)
    factory.set_shared(True)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        print("cannot listen on port", port, flush=True)
        sys.exit(1)
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
