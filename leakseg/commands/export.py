"""Import a JVLGS or FGSTP checkpoint and write a TorchServe archive (model_store/NAME.mar).

CHECKPOINT is either an authors' .pth (JVLGS: IGS-Few_best.pth, a SimGas fold; FGSTP:
gasvid_best.pth; keys as in the published research code, optionally prefixed "module.") or a
native leakseg checkpoint folder (config.json + model.safetensors). The family (by its keys) and
the architecture (PVTv2 b0-b5, text model depth/width/MLP, prompt count P) are read from the
checkpoint: no flags are needed. An FGSTP model takes no prompts, and its archive's
post-processing defaults are its test script's (min-max, 0.5, no opening).

Steps: 1 build the model and import the weights; 2 embed the prompts once with the
checkpoint's own text model (CLIP BPE tokenizer, offline; nothing for FGSTP); 3 trace the clip
graph (each frame encoded once, every frame's triplet decoded); 4 compare the graph with the
eager model on check clips: the largest logit difference relative to the logits' scale (refused
above --tolerance, default 1e-3) and the IoU of the post-processed masks (refused below 0.99);
both are printed and stored in the manifest; 5 trace the network's two halves for camera
streams (the encoder once per frame, the head once per triplet: `leakseg monitor --archive` encodes
each frame of a stream once) and check them the same way (skip with --no-stream); 6 write the .mar
(graph, stream halves, prompt bank, manifest, handler).

examples:
  leakseg export --checkpoint IGS-Few_best.pth
  leakseg export --checkpoint gasvid_best.pth --name fgstp
  leakseg export --checkpoint model_store/jvlgs-default --name jvlgs
  leakseg export --checkpoint ft.pth --text-model ./owlv2-base-patch16 \\
      --extra-prompts "gas plume" "vapour cloud"
"""

from pathlib import Path

from leakseg.commands import add_postprocess_arguments, postprocess_overrides


def add_arguments(parser):
    parser.add_argument("--checkpoint", required=True, type=Path, help="authors' .pth or native checkpoint folder")
    parser.add_argument("--format", choices=["onnx", "torchscript"], default="onnx",
                        help="graph format (default onnx: fastest on CPU, CUDA provider on GPU)")
    parser.add_argument("--name", default="jvlgs", help="model name: the URL is /predictions/NAME (default jvlgs)")
    parser.add_argument("--version", default="1.0", help="model version recorded in the archive (default 1.0)")
    parser.add_argument("--output-dir", type=Path, default=Path("model_store"), help="where NAME.mar goes")
    parser.add_argument("--prompts", nargs="+", metavar="PROMPT",
                        help="the P prompts, in order (default: the published four)")
    parser.add_argument("--extra-prompts", nargs="+", default=[], metavar="PROMPT",
                        help="more prompts to precompute, which requests may use in place of the defaults")
    parser.add_argument("--text-model", type=Path, metavar="DIR",
                        help="local Hugging Face OWLv2 folder: its tokenizer, and its text weights when the "
                             "checkpoint has none")
    parser.add_argument("--batch-size", type=int, default=4, help="TorchServe batch size (requests per forward)")
    parser.add_argument("--max-batch-delay", type=int, default=50, help="ms TorchServe waits to fill a batch")
    parser.add_argument("--workers", type=int, default=1, help="TorchServe workers for this model")
    parser.add_argument("--max-frames", type=int, default=32, help="frames per request (default 32)")
    parser.add_argument("--tolerance", type=float, metavar="REL",
                        help="largest logit difference between the exported graph and the eager model, as a share "
                             "of the logits' scale (their largest magnitude, at least 1), above which export refuses "
                             "(default 1e-3); the masks must also agree (IoU >= 0.99)")
    parser.add_argument("--quantize", choices=["int8"],
                        help="int8 clip graph (ONNX Runtime static quantization, QDQ, per-channel weights, calibrated "
                             "on generated clips); refused unless its masks agree with the float graph's (IoU >= "
                             "0.97 on check clips); the speed-up measured is printed and stored. On the bundled "
                             "default model it does not pay on AVX2 CPUs (docs/MODELS.md, \"int8\")")
    parser.add_argument("--no-stream", dest="stream", action="store_false",
                        help="do not archive the stream halves (smaller archive; `leakseg monitor --archive` then "
                             "analyses overlapping windows, encoding each frame 1.33 times)")
    parser.add_argument("--kserve", type=Path, metavar="DIR",
                        help="also write KServe's TorchServe-runtime storage layout (config/config.properties + "
                             "model-store/NAME.mar) to DIR, for an InferenceService's storageUri (docs/DEPLOY.md)")
    post = parser.add_argument_group(
        "post-processing defaults stored in the archive (requests may override them; unset ones come from "
        "a native checkpoint's config.json \"postprocess\", else the published values)")
    add_postprocess_arguments(post, "default: the checkpoint's recommendation, else the published value")


def run(args):
    import logging

    from leakseg.model.checkpoint import CheckpointError
    from leakseg.export.exporter import ExportOptions, export_archive
    from leakseg.io.frames import ClipLimits

    try:
        opts = ExportOptions(
            checkpoint=args.checkpoint, name=args.name, version=args.version, format=args.format,
            output_dir=args.output_dir, prompts=args.prompts, extra_prompts=args.extra_prompts,
            text_model_dir=args.text_model, batch_size=args.batch_size, max_batch_delay_ms=args.max_batch_delay,
            workers=args.workers, limits=ClipLimits(max_frames=args.max_frames),
            postprocess=postprocess_overrides(args), tolerance=args.tolerance, stream=args.stream,
            quantize=args.quantize,
        )
        opts.postprocess_defaults()  # a bad value fails here, before any work
        mar = export_archive(opts)
    except (CheckpointError, ValueError, RuntimeError, FileNotFoundError) as exc:
        logging.getLogger("leakseg.export").error("%s", exc)
        return 1
    print(f"wrote {mar}")
    if getattr(args, "kserve", None):
        from leakseg.export.kserve_layout import write_kserve_layout

        print(f"wrote KServe layout {write_kserve_layout(mar, args.kserve, workers=args.workers)}")
    return 0
