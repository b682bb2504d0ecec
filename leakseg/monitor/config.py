"""The monitor's configuration file (YAML), validated with pydantic.

Every key is documented in docs/SCADA.md and examples/monitor.yaml. Unknown keys are errors (a
typo must not silently switch a safety feature off), and :func:`load_config` turns pydantic's
errors into one line per problem naming the key and, for camera keys, the camera::

    monitor.yaml: cameras[1] (name 'east-flare') -> alarm -> k: k (4) must be <= n (3)

Only pydantic and the standard library are imported (plus PyYAML to read the file).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Dict, List, Literal, Optional, Tuple, Union

from pydantic import AfterValidator, Field, ValidationError, field_validator, model_validator

from leakseg.schema import ClipOptions, StrictModel
from leakseg.selftest.settings import SelfTestSchedule


class ConfigError(ValueError):
    """The configuration file is missing, not YAML, or invalid; ``str()`` lists every problem."""


# -- per camera -----------------------------------------------------------------------------------


class AlarmSettings(StrictModel):
    """When a camera raises and clears LEAK (per analysed frame, after the ignore mask)."""

    min_area_pixels: int = Field(50, ge=1, description="A frame counts as a leak frame when its plume "
                                 "outside the ignore mask has at least this many pixels ...")
    min_area_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="... and at least this fraction of the frame.")
    k: int = Field(3, ge=1, description="Raise LEAK when at least k ...")
    n: int = Field(5, ge=1, le=1000, description="... of the last n analysed frames are leak frames.")
    clear_frames: int = Field(10, ge=1, description="Clear LEAK after this many leak-free frames in a row.")
    min_score: float = Field(0.0, ge=0.0, le=1.0, description="A leak frame also needs max_score >= this.")

    @model_validator(mode="after")
    def _k_le_n(self) -> "AlarmSettings":
        if self.k > self.n:
            raise ValueError(f"k ({self.k}) must be <= n ({self.n}): k of the last n frames")
        return self


#: A file of this name in a drop folder says the producer is done (replays, tests).
END_MARKER = "END"


class FaultSettings(StrictModel):
    """When a camera is faulty (never reported as 'no leak') and how it is reconnected."""

    stale_seconds: float = Field(10.0, gt=0, description="No new frame for this long: CAMERA_FAULT.")
    frozen_frames: int = Field(50, ge=2, description="This many identical frames in a row: CAMERA_FAULT (frozen).")
    reconnect_initial: float = Field(1.0, gt=0, description="First reconnection delay, seconds.")
    reconnect_max: float = Field(30.0, gt=0, description="Reconnection delays double up to this, seconds.")
    open_timeout: float = Field(10.0, gt=0, description="Seconds to wait when opening or reading a stream.")
    analysis_seconds: Optional[float] = Field(None, gt=0, description="Windows wait but no analysis completes "
                                              "for this long: SERVICE_FAULT (default: service.timeout).")


class DetectabilitySettings(StrictModel):
    """When a camera that delivers frames is DEGRADED: it cannot see gas (fog, rain on the window, defocus,
    an obstruction, no thermal contrast). Checked per analysed window on a few of its frames; docs/SCADA.md,
    "DEGRADED: the camera cannot see gas". Contrast levels are the picture's robust spread (p99 - p1 of the
    grey level) in the frame's own units: 8-bit frames are AGC-stretched by the camera, 16-bit frames are raw
    counts, so each pixel type has its own."""

    enabled: bool = Field(True, description="Check the picture of every analysed window (uint8 and uint16 frames).")
    min_contrast_uint8: float = Field(20.0, ge=0, le=255, description="8-bit frames: a window fails 'low "
                                      "contrast' when p99 - p1 is below this many grey levels (of 255).")
    min_contrast_uint16: float = Field(200.0, ge=0, le=65535, description="16-bit frames: the same in counts "
                                       "(of 65535).")
    flat_contrast_uint8: float = Field(3.0, ge=0, le=255, description="8-bit frames: a window fails 'flat "
                                       "picture' (a lens cap, a dead sensor, a blank feed) when p99 - p1 is at "
                                       "most this many grey levels.")
    flat_contrast_uint16: float = Field(30.0, ge=0, le=65535, description="16-bit frames: the same in counts.")
    max_saturated_fraction: float = Field(0.2, gt=0, le=1, description="A window fails 'saturated' when more than "
                                          "this fraction of its pixels sits at the pixel type's minimum or maximum.")
    min_sharpness_ratio: float = Field(0.4, gt=0, lt=1, description="A window fails 'blurred' when its sharpness "
                                       "(gain-free gradient energy) is below this fraction of the camera's reference.")
    reference_windows: int = Field(5, ge=1, le=1000, description="The sharpness reference is the median of the "
                                   "camera's first this many windows that pass the other checks (relearned after a "
                                   "restart or a change of frame size).")
    sharpness_reference: Optional[float] = Field(None, gt=0, description="A fixed sharpness reference (the value "
                                                 "the monitor logs when it learns one) instead of learning it: for "
                                                 "a camera that may start blind.")
    bad_windows: int = Field(5, ge=1, le=1000, description="DEGRADED after this many failing windows in a row ...")
    good_windows: int = Field(5, ge=1, le=1000, description="... and no longer after this many passing windows in a row.")

    def contrast_levels(self, dtype: str) -> Tuple[float, float]:
        """(flat, low) contrast levels for frames of ``dtype`` ("uint8" or "uint16")."""
        return getattr(self, f"flat_contrast_{dtype}"), getattr(self, f"min_contrast_{dtype}")

    @model_validator(mode="after")
    def _flat_below_low(self) -> "DetectabilitySettings":
        for dtype in ("uint8", "uint16"):
            flat, low = self.contrast_levels(dtype)
            if flat > low:
                raise ValueError(f"flat_contrast_{dtype} ({flat:g}) must be <= min_contrast_{dtype} ({low:g})")
        return self


class ChangeGateSettings(StrictModel):
    """Skip the model on windows in which nothing moves (docs/SCADA.md, "Change gate: still scenes skip the
    model"). A plant scene is mostly still and gas always moves: a window whose temporal difference energies
    (frame to frame, and against the picture the model last analysed) stay, in every block, within ``factor`` x
    the camera's own measured noise floors is judged gas-free without the model. Off by default: turn it on for a camera once its self-test with the gate on shows the same
    probability of detection as with it off (`leakseg selftest`)."""

    enabled: bool = Field(False, description="Skip the model on still windows (off by default: prove it on the "
                          "camera with `leakseg selftest`, gate on vs off, before turning it on).")
    factor: float = Field(3.0, ge=1.0, le=100.0, description="A window is still when no block's motion "
                          "(frame to frame) or drift (against the picture the model last analysed) energy exceeds "
                          "this many times that block's noise floor (plus half a quantisation step squared); lower "
                          "is more careful.")
    block_pixels: int = Field(16, ge=4, le=256, description="Blocks of this many x this many pixels are judged "
                              "on their own, so a small plume is not diluted by a still frame.")
    learn_windows: int = Field(10, ge=3, le=1000, description="The noise floor of each block is the median energy "
                               "of the camera's first this many windows (analysed, with one more for the drift "
                               "floor), learned again at a new frame size; afterwards it follows the scene down, "
                               "never up.")
    max_skipped_windows: int = Field(5, ge=1, le=1000, description="After this many skipped windows in a row the "
                                     "next one is analysed anyway (a failing model is still noticed, a slowly "
                                     "creeping plume still seen).")


#: A pixel coordinate of the camera's frame; strict: "12" or true in the file is a typo, not a pixel.
PixelCoordinate = Annotated[int, Field(ge=0, strict=True)]
#: [x, y]: x to the right, y down, [0, 0] the top-left pixel.
ZonePoint = Tuple[PixelCoordinate, PixelCoordinate]


def _three_points(points: List[ZonePoint]) -> List[ZonePoint]:
    if len(points) < 3:
        raise ValueError(f"a polygon needs at least 3 points [x, y], got {len(points)}")
    return points


Polygon = Annotated[List[ZonePoint], AfterValidator(_three_points)]


class Zones(StrictModel):
    """Polygons in pixels of the camera's frame, beside (or instead of) an ignore_mask image."""

    ignore: List[Polygon] = Field(default_factory=list, description="Polygons whose pixels are ignored, each "
                                  "a list of >= 3 points [x, y] in pixels of the frame (x right, y down, [0, 0] "
                                  "the top-left pixel); a pixel is inside when Pillow's ImageDraw.polygon "
                                  "paints it, edges included. Combined with ignore_mask (either ignores).")
    region_of_interest: Optional[Polygon] = Field(None, description="One polygon (same rules): every pixel "
                                                  "outside it is ignored.")


class CameraConfig(StrictModel):
    name: str = Field(..., description="Unique name; used in topics, OPC UA browse names and logs.")
    source: str = Field(..., description="A URL or file FFmpeg opens (rtsp://, http://, a video file) or a drop folder.")
    kind: Literal["auto", "stream", "folder"] = Field(
        "auto", description="'folder' for a drop folder, 'stream' for anything FFmpeg opens; 'auto' picks "
        "'folder' when source is an existing directory.")
    analysis_fps: Optional[float] = Field(5.0, gt=0, description="Frames per second taken from the stream "
                                          "(by timestamp); null takes every frame.")
    clip_frames: Optional[int] = Field(None, ge=3, le=64, description="Frames per window (windows overlap by 2; "
                                       "each frame is reported once). Unset: 3 when the model runs in process "
                                       "and streams (a frame's mask is ready when the frame two after it arrives; "
                                       "each frame encoded once), 8 for the service (a request per 6 frames).")
    realtime: Optional[bool] = Field(None, description="Pace a video file at its own frame rate (default: true "
                                     "for files, streams are real time anyway). false reads a recording as fast "
                                     "as the service takes it, without dropping windows. Drop folders: false analyses every frame "
                                     "(the reader waits for the service); a folder that already holds its END "
                                     "file at the start is a replay and is read that way too.")
    loop: bool = Field(False, description="Restart a video file or folder listing at its end (demos).")
    ignore_mask: Optional[Path] = Field(None, description="Image of the camera's frame size: non-zero pixels "
                                        "are ignored (e.g. a stack that always vents).")
    zones: Optional[Zones] = Field(None, description="Ignore polygons and a region of interest, in pixels "
                                   "of the frame; `leakseg monitor --check FILE --draw-zones DIR` draws them.")
    prompts: Optional[List[str]] = Field(None, description="Text prompts for the service (default: the model's).")
    options: Dict[str, Any] = Field(default_factory=dict, description="Service options (threshold, normalization, ...).")
    alarm: AlarmSettings = Field(default_factory=AlarmSettings)
    faults: FaultSettings = Field(default_factory=FaultSettings)
    detectability: DetectabilitySettings = Field(default_factory=DetectabilitySettings)
    change_gate: ChangeGateSettings = Field(default_factory=ChangeGateSettings)
    max_pending_windows: int = Field(1, ge=1, le=16, description="Windows waiting for the service per camera; "
                                     "more are dropped (oldest first) and counted.")
    modbus_base: Optional[int] = Field(None, ge=0, le=65000, description="First Modbus register of this camera "
                                       "(default: 16 x its position in the list).")
    delete_after_read: bool = Field(False, description="Folder sources: delete each frame file once read.")
    selftest: Optional[SelfTestSchedule] = Field(None, description="A scheduled in-field self-test of this camera "
                                                 "(synthetic plumes on its own background; docs/SCADA.md, "
                                                 "\"Commissioning a camera\"); null: only `leakseg selftest`.")

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", v):
            raise ValueError("use 1-64 letters, digits, '_', '.', '-' (it becomes an MQTT topic level and "
                             "an OPC UA browse name), starting with a letter or digit")
        return v

    @field_validator("options")
    @classmethod
    def _options_ok(cls, v: Dict[str, Any]) -> Dict[str, Any]:
        if "return_masks" in v and not v["return_masks"]:
            raise ValueError("return_masks cannot be false: the monitor needs the masks (ignore mask, evidence)")
        ClipOptions.model_validate(v)  # same rules as the service, before anything is sent
        return v

    @field_validator("ignore_mask")
    @classmethod
    def _mask_exists(cls, v: Optional[Path]) -> Optional[Path]:
        if v is not None and not Path(v).is_file():
            raise ValueError(f"file not found: {v}")
        return v

    @field_validator("prompts")
    @classmethod
    def _prompts_ok(cls, v: Optional[List[str]]) -> Optional[List[str]]:
        if v is not None and (not v or any(not p.strip() for p in v)):
            raise ValueError("give at least one non-empty prompt, or leave prompts out")
        return v

    @model_validator(mode="after")
    def _kind(self) -> "CameraConfig":
        if self.kind == "auto":
            self.kind = "folder" if Path(self.source).is_dir() else "stream"
        if self.kind == "folder" and not Path(self.source).is_dir():
            raise ValueError(f"source: folder not found: {self.source}")
        if self.faults.reconnect_max < self.faults.reconnect_initial:
            raise ValueError("faults -> reconnect_max must be >= reconnect_initial")
        return self

    @property
    def is_file(self) -> bool:
        """A local video file (not a URL, not a folder)."""
        return self.kind == "stream" and "://" not in self.source and Path(self.source).is_file()

    @property
    def lossless(self) -> bool:
        """Backpressure waits instead of dropping: a recording read with ``realtime: false``, or a drop folder
        replayed (``realtime: false``, or its END file already there when the monitor starts)."""
        if self.kind == "folder":
            return self.realtime is False or (self.realtime is None and (Path(self.source) / END_MARKER).exists())
        return self.is_file and not self.paced

    @property
    def paced(self) -> bool:
        if self.realtime is not None:
            return self.realtime
        return True


# -- service and sinks ----------------------------------------------------------------------------


class ServiceConfig(StrictModel):
    url: str = Field("http://127.0.0.1:8080", description="Base URL of the leakseg inference API.")
    model: str = "jvlgs"
    key_file: Optional[Path] = Field(None, description="TorchServe key_file.json (else $LEAKSEG_TOKEN / $LEAKSEG_KEY_FILE).")
    token_env: str = Field("LEAKSEG_TOKEN", description="Environment variable holding the inference token.")
    timeout: float = Field(60.0, gt=0, description="Read timeout per clip, seconds.")
    concurrency: int = Field(2, ge=1, le=64, description="Clips in flight at once, over all cameras.")
    retry_seconds: float = Field(5.0, gt=0, description="After a failed window (service unreachable or "
                                 "failing, an answer that does not fit), wait this long; the wait doubles while "
                                 "windows keep failing, up to 4 x this.")


class JsonlSink(StrictModel):
    path: Path = Field(Path("monitor-events.jsonl"), description="Event log, one JSON object per line.")
    max_bytes: int = Field(10_000_000, ge=1000, description="Rotate when the file reaches this size.")
    backups: int = Field(10, ge=0, description="Rotated files kept (path.1 ... path.N).")
    states: bool = Field(False, description="Also log every per-window state update (not only events).")


class TlsSettings(StrictModel):
    ca_certs: Optional[Path] = None
    certfile: Optional[Path] = None
    keyfile: Optional[Path] = None
    insecure: bool = Field(False, description="Skip the broker hostname check (test setups only).")


class MqttSink(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    topic_prefix: str = Field("leakseg", description="Topics: PREFIX/status, PREFIX/CAMERA/state|event|ack.")
    client_id: str = "leakseg-monitor"
    username: Optional[str] = None
    password_env: Optional[str] = Field(None, description="Environment variable holding the password.")
    tls: Optional[TlsSettings] = None
    qos: Literal[0, 1, 2] = 1
    keepalive: int = Field(30, ge=5)
    event_queue: int = Field(1000, ge=1, le=100_000, description="Events kept while the broker is unreachable; "
                             "beyond it the oldest are dropped and counted (PREFIX/sink_health).")


class OpcUaUser(StrictModel):
    name: str
    password_env: str = Field(..., description="Environment variable holding this user's password.")


class OpcUaSink(StrictModel):
    endpoint: str = Field("opc.tcp://0.0.0.0:4840/leakseg", description="Where the OPC UA server listens.")
    namespace: str = "urn:leakseg:monitor"
    security_policies: List[Literal["None", "Basic256Sha256_Sign", "Basic256Sha256_SignAndEncrypt"]] = Field(
        default_factory=lambda: ["None"], description="Offered security policies.")
    certificate: Optional[Path] = Field(None, description="Server certificate (DER or PEM); needed for Basic256Sha256.")
    private_key: Optional[Path] = None
    allow_anonymous: bool = Field(True, description="Anonymous sessions may browse and read (never write).")
    users: List[OpcUaUser] = Field(default_factory=list, description="Users who may log in (and acknowledge).")
    anonymous_can_acknowledge: bool = Field(False, description="Let anonymous sessions call Acknowledge.")

    @model_validator(mode="after")
    def _security(self) -> "OpcUaSink":
        secure = [p for p in self.security_policies if p != "None"]
        if secure and not (self.certificate and self.private_key):
            raise ValueError(f"security_policies {secure} need certificate and private_key")
        if not self.allow_anonymous and not self.users:
            raise ValueError("allow_anonymous is false and no users are configured: nobody could connect")
        return self


class ModbusSink(StrictModel):
    host: str = "0.0.0.0"
    port: int = Field(5020, ge=1, le=65535, description="502 needs root; 5020 by default.")
    device_id: int = Field(1, ge=0, le=247)
    heartbeat_seconds: float = Field(1.0, gt=0, description="The heartbeat register increments this often.")
    selftest_offset: int = Field(4096, ge=16, le=65528, description="Each camera's 8 self-test registers start "
                                 "at its base + this (docs/SCADA.md, Modbus); they must not overlap any "
                                 "camera's 16 registers.")


class Sinks(StrictModel):
    jsonl: Optional[JsonlSink] = Field(default_factory=JsonlSink)
    mqtt: Optional[MqttSink] = None
    opcua: Optional[OpcUaSink] = None
    modbus: Optional[ModbusSink] = None


class MonitorConfig(StrictModel):
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    evidence_dir: Path = Field(Path("monitor-evidence"), description="One folder per alarm: overlay GIF, result JSON.")
    evidence_keep: int = Field(200, ge=1, description="Alarm folders kept; the oldest are deleted.")
    cameras: List[CameraConfig] = Field(..., min_length=1)
    sinks: Sinks = Field(default_factory=Sinks)
    status_interval: float = Field(1.0, gt=0, description="Seconds between status table refreshes / heartbeats.")
    shutdown_seconds: float = Field(8.0, gt=0, le=300, description="On SIGINT/SIGTERM every camera is published "
                                    "OFFLINE first, then the monitor closes and exits within this many seconds "
                                    "(keep it under the container's grace period).")

    @model_validator(mode="after")
    def _unique(self) -> "MonitorConfig":
        seen = set()
        for cam in self.cameras:
            if cam.name in seen:
                raise ValueError(f"camera name '{cam.name}' is used twice")
            seen.add(cam.name)
        bases = {}
        for i, cam in enumerate(self.cameras):
            base = cam.modbus_base if cam.modbus_base is not None else 16 * i
            for other, ob in bases.items():
                if abs(ob - base) < 16:
                    raise ValueError(f"cameras '{other}' and '{cam.name}' overlap in the Modbus map "
                                     f"(bases {ob} and {base}; each camera uses 16 registers)")
            bases[cam.name] = base
        if self.sinks.modbus is not None:
            _selftest_blocks_fit(bases, self.sinks.modbus.selftest_offset)
        return self

    def modbus_base(self, index: int) -> int:
        cam = self.cameras[index]
        return cam.modbus_base if cam.modbus_base is not None else 16 * index


#: Registers of a camera's block and of its self-test block (leakseg.monitor.sinks.modbus).
CAMERA_REGISTERS, SELFTEST_REGISTERS = 16, 8


def _selftest_blocks_fit(bases: Dict[str, int], offset: int) -> None:
    """Every camera's self-test block (base + offset, 8 registers) lies in the 65536 addresses and overlaps no
    camera's 16 registers (self-test blocks cannot overlap each other: their bases are 16 apart)."""
    for name, base in bases.items():
        start = base + offset
        if start + SELFTEST_REGISTERS > 65536:
            raise ValueError(f"camera '{name}': its Modbus self-test registers {start}..{start + 7} (base {base} + "
                             f"sinks.modbus.selftest_offset {offset}) go past register 65535")
        for other, other_base in bases.items():
            if start < other_base + CAMERA_REGISTERS and other_base < start + SELFTEST_REGISTERS:
                raise ValueError(f"camera '{name}': its Modbus self-test registers {start}..{start + 7} (base "
                                 f"{base} + sinks.modbus.selftest_offset {offset}) overlap camera '{other}''s "
                                 f"registers {other_base}..{other_base + 15}")


# -- loading --------------------------------------------------------------------------------------


def _where(loc: tuple, data: Any) -> str:
    """'cameras[1] (name 'x') -> alarm -> k' from a pydantic error location."""
    parts: List[str] = []
    node = data
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and item < len(node):
                node = node[item]
                if isinstance(node, dict) and node.get("name"):
                    label += f" (name '{node['name']}')"
            else:
                node = None
            if parts:
                parts[-1] += label
            else:
                parts.append(label)
        else:
            parts.append(str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return " -> ".join(parts) if parts else "(top level)"


def format_errors(exc: ValidationError, data: Any, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-")))
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; every key is listed in docs/SCADA.md)"
        lines.append(f"{source}: {_where(loc, data)}: {msg}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "config", base_dir: Optional[Path] = None) -> MonitorConfig:
    """Validate a parsed YAML/JSON document. Relative paths are resolved against ``base_dir``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with a 'cameras' list, got {type(data).__name__}")
    if base_dir is not None:
        data = _resolve_paths(data, base_dir)
    try:
        return MonitorConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, data, source)) from None


def load_config(path: Union[str, Path]) -> MonitorConfig:
    """Read and validate a YAML file; raises :class:`ConfigError` with one line per problem."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, str(path), path.parent)


_PATH_KEYS = {("evidence_dir",), ("service", "key_file"), ("sinks", "jsonl", "path")}
_CAMERA_PATH_KEYS = ("ignore_mask",)


def _resolve_paths(data: Dict[str, Any], base: Path) -> Dict[str, Any]:
    """Relative file paths in the file are relative to the file, not to the working directory."""
    import copy

    data = copy.deepcopy(data)

    def fix(value: Any) -> Any:
        if isinstance(value, str) and value and not os.path.isabs(value) and "://" not in value:
            return str(base / value)
        return value

    for keys in _PATH_KEYS:
        node = data
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and keys[-1] in node:
            node[keys[-1]] = fix(node[keys[-1]])
    for cam in data.get("cameras") or []:
        if isinstance(cam, dict):
            for k in _CAMERA_PATH_KEYS:
                if k in cam:
                    cam[k] = fix(cam[k])
            src = cam.get("source")
            if isinstance(src, str) and "://" not in src and not os.path.isabs(src):
                cam["source"] = str(base / src)
    return data
