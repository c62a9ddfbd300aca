"""pipeline.data.audio.load_clip: good files, repairs, and every kind of bad file."""

import os
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from pipeline.data.audio import Decoded, clip_length, load_clip

SR = 2000
N = 4000  # 2 s at 2 kHz


def tone(*, freq=100.0, sr=SR, n=N, amplitude=0.5):
    """A sine of ``freq`` Hz, [n] float32."""
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(n) / sr)).astype(np.float32)


def write(path, samples, *, sr=SR, format="AIFF", subtype="PCM_16"):
    sf.write(str(path), samples, sr, format=format, subtype=subtype)
    return str(path)


def cut(path, n_bytes):
    """Keep the first ``n_bytes`` of ``path`` (negative: drop that many from the end)."""
    data = open(path, "rb").read()
    open(path, "wb").write(data[:n_bytes])
    return str(path)


def load(path, **kwargs):
    kwargs = {"sample_rate": SR, "duration": 2.0, **kwargs}
    return load_clip(str(path), **kwargs)


# ----------------------------------------------------------------------------- good files


def test_good_aiff_round_trips(tmp_path, rng):
    x = (0.3 * rng.standard_normal(N)).clip(-1, 1).astype(np.float32)
    out = load(write(tmp_path / "a.aiff", x))
    assert out.ok and out.reason is None and out.notes == ()
    assert out.samples.shape == (N,) and out.samples.dtype == np.float32
    np.testing.assert_allclose(out.samples, x, atol=1.0 / 32768)  # 16-bit quantisation


@pytest.mark.parametrize(
    "format,subtype,suffix",
    [
        ("AIFF", "PCM_16", "aiff"),
        ("AIFF", "PCM_24", "aiff"),
        ("AIFF", "FLOAT", "aiff"),
        ("AIFF", "ULAW", "aifc"),
        ("WAV", "PCM_16", "wav"),
        ("WAV", "PCM_24", "wav"),
        ("WAV", "FLOAT", "wav"),
        ("WAV", "IMA_ADPCM", "wav"),
        ("FLAC", "PCM_16", "flac"),
        ("OGG", "VORBIS", "ogg"),
    ],
)
def test_complete_files_are_never_called_truncated(tmp_path, format, subtype, suffix):
    # The header parser must not misread codecs whose data size is not frames * block_align.
    out = load(write(tmp_path / f"x.{suffix}", tone(), format=format, subtype=subtype))
    assert out.ok, out.reason
    assert out.samples.shape == (N,)


@pytest.mark.parametrize(
    "format,subtype,channels,fast",
    [
        ("AIFF", "PCM_16", 1, True),
        ("AIFF", "PCM_16", 2, True),
        ("AIFF", "PCM_32", 1, True),
        ("WAV", "PCM_16", 1, True),
        ("WAV", "PCM_16", 3, True),
        ("WAV", "PCM_32", 2, True),
        ("WAV", "FLOAT", 1, True),
        ("AIFF", "PCM_24", 1, False),
        ("AIFF", "FLOAT", 1, False),
        ("WAV", "PCM_U8", 1, False),
    ],
)
def test_numpy_pcm_reader_equals_libsndfile(tmp_path, rng, format, subtype, channels, fast):
    # Plain PCM is read with numpy from the parsed header; it must give libsndfile's floats bit for bit.
    from pipeline.data.audio import _file_reader, _read_header

    x = (0.4 * rng.standard_normal((N, channels))).clip(-1, 1).astype(np.float32)
    x[:3] = [[-1.0] * channels, [1.0 - 2 ** -15] * channels, [0.0] * channels]  # full scale and zero
    path = write(tmp_path / f"x.{format.lower()}", x, format=format, subtype=subtype)
    with open(path, "rb") as fh:
        header = _read_header(_file_reader(fh), os.path.getsize(path))
    assert (header.pcm is not None) == fast
    expected = sf.read(path, dtype="float32", always_2d=True)[0]
    expected = expected[:, 0] if channels == 1 else expected.mean(axis=1, dtype=np.float32)
    out = load(path)
    assert out.ok, out.reason
    np.testing.assert_array_equal(out.samples, expected)


def test_large_files_are_read_through_a_file_object_with_the_same_result(tmp_path, rng, monkeypatch):
    # Files up to _WHOLE_FILE_BYTES are read in one os.read; larger ones seek to the header chunks and samples.
    from pipeline.data import audio

    x = (0.4 * rng.standard_normal((N, 2))).clip(-1, 1).astype(np.float32)
    paths = [write(tmp_path / f"x.{fmt.lower()}", x, format=fmt) for fmt in ("AIFF", "WAV")]
    paths.append(write(tmp_path / "cut.aiff", x))
    with open(paths[-1], "r+b") as f:  # truncated: the header promises more frames than the file holds
        f.truncate(os.path.getsize(paths[-1]) - 1000)
    small = [load(p) for p in paths]
    monkeypatch.setattr(audio, "_WHOLE_FILE_BYTES", 0)
    large = [load(p) for p in paths]
    for a, b in zip(small, large):
        assert a.reason == b.reason and a.notes == b.notes
        if a.ok:
            np.testing.assert_array_equal(a.samples, b.samples)
    assert small[0].ok and small[2].reason.startswith("truncated")


def test_a_remembered_header_is_used_only_for_files_whose_header_bytes_match(tmp_path):
    # Decoding reuses the last parsed header for a file of the same size when the bytes the
    # parser read are equal; same-size files whose headers differ must get their own.
    from pipeline.data import audio

    x = tone()
    paths = {
        "mono 2 kHz": write(tmp_path / "a.aiff", x),
        "mono 2 kHz, other samples": write(tmp_path / "b.aiff", tone(freq=300.0)),
        "mono 4 kHz": write(tmp_path / "c.aiff", x, sr=4000),
        "stereo, half the frames": write(tmp_path / "d.aiff", np.stack([x[: N // 2]] * 2, axis=1)),
    }
    assert len({os.path.getsize(p) for p in paths.values()}) == 1  # only the header bytes tell them apart
    expected = {name: sf.read(path, dtype="float32", always_2d=True)[0].mean(axis=1) for name, path in paths.items()}
    audio._recent_headers.clear()
    for _ in range(2):  # in both orders: first parse, then remembered
        for name, path in list(paths.items())[::-1] + list(paths.items()):
            out = load(path, duration=2.0 if name.startswith("mono 2") else 1.0)
            assert out.ok, (name, out.reason)
            if "4 kHz" in name:
                assert out.notes == ("resampled 4000->2000 Hz",)
            else:
                assert out.notes == (("stereo mixed down",) if "stereo" in name else ())
                np.testing.assert_array_equal(out.samples, expected[name], err_msg=name)
    assert len(audio._recent_headers) == 1


def test_numpy_pcm_reader_reads_the_header_sample_rate(tmp_path):
    # 44.1 kHz (not a power of two: exercises the 80-bit extended rate of AIFF) is resampled like libsndfile's.
    for fmt in ("AIFF", "WAV"):
        path = write(tmp_path / f"r.{fmt.lower()}", tone(sr=44100, n=44100), sr=44100, format=fmt)
        out = load(path)
        assert out.ok and "resampled 44100->2000 Hz" in out.notes


def test_stereo_wav_at_another_rate_is_mixed_down_and_resampled(tmp_path):
    left, right = tone(freq=100.0, sr=4000, n=8000), tone(freq=100.0, sr=4000, n=8000, amplitude=0.3)
    path = write(tmp_path / "s.wav", np.stack([left, right], axis=1), sr=4000, format="WAV")
    out = load(path)
    assert out.ok
    assert out.notes == ("stereo mixed down", "resampled 4000->2000 Hz")
    assert out.samples.shape == (N,)
    expected = tone(freq=100.0, amplitude=0.4)  # mean of the channels, at 2 kHz
    core = slice(200, N - 200)  # resampling filters ring at the edges
    assert np.corrcoef(out.samples[core], expected[core])[0, 1] > 0.999
    np.testing.assert_allclose(np.abs(out.samples[core]).max(), 0.4, atol=0.01)


def test_many_channels_are_averaged(tmp_path):
    x = np.stack([tone(amplitude=a) for a in (0.1, 0.2, 0.6)], axis=1)
    out = load(write(tmp_path / "c.wav", x, format="WAV", subtype="FLOAT"))
    assert out.notes == ("3 channels mixed down",)
    np.testing.assert_allclose(out.samples, tone(amplitude=0.3), atol=1e-6)


def test_short_clip_is_padded_at_the_end(tmp_path):
    x = tone(n=1900)
    out = load(write(tmp_path / "p.wav", x, format="WAV", subtype="FLOAT"))
    assert out.notes == ("padded 1900->4000 samples",)
    np.testing.assert_array_equal(out.samples[:1900], x)
    assert not out.samples[1900:].any()


def test_long_clip_is_cropped_from_the_start(tmp_path):
    x = tone(n=5000, freq=37.0)
    out = load(write(tmp_path / "c.wav", x, format="WAV", subtype="FLOAT"))
    assert out.notes == ("cropped 5000->4000 samples",)
    np.testing.assert_array_equal(out.samples, x[:N])


def test_the_whole_files_length_is_known_without_decoding_beyond_the_clip(tmp_path):
    # The feature cache reads a file further (for its extra windows) only when it is longer than the clip.
    cases = [("padded.wav", tone(n=1900), 2000, "WAV", 1900), ("cropped.wav", tone(n=5000), 2000, "WAV", 5000),
             ("exact.aiff", tone(n=N), 2000, "AIFF", N), ("long.flac", tone(sr=4000, n=24000), 4000, "FLAC", 12000)]
    for name, x, sr, fmt, expected in cases:
        out = load(write(tmp_path / name, x, sr=sr, format=fmt))
        assert out.ok and out.samples.shape == (N,) and out.file_samples == expected, name
    assert load(str(tmp_path / "missing.wav")).file_samples is None


@pytest.mark.parametrize("sample_rate,duration,expected", [(2000, 2.0, 4000), (22050, 5.0, 110250), (1000, 0.0015, 2)])
def test_output_length_is_round_duration_times_rate(tmp_path, sample_rate, duration, expected):
    assert clip_length(sample_rate=sample_rate, duration=duration) == expected
    out = load(write(tmp_path / "t.wav", tone(), format="WAV"), sample_rate=sample_rate, duration=duration)
    assert out.ok and out.samples.shape == (expected,)


# ----------------------------------------------------------------------------- repairs and skips


def test_few_nan_samples_are_repaired(tmp_path):
    x = tone()
    x[[10, 500, 3000]] = [np.nan, np.inf, -np.inf]
    out = load(write(tmp_path / "n.wav", x, format="WAV", subtype="FLOAT"))
    assert out.ok
    assert out.notes == ("3 non-finite samples set to 0",)
    assert np.isfinite(out.samples).all()
    assert (out.samples[[10, 500, 3000]] == 0).all()
    np.testing.assert_array_equal(out.samples[11:500], x[11:500])


def test_nan_in_one_channel_does_not_erase_the_other(tmp_path):
    x = np.stack([tone(), tone()], axis=1)
    x[7, 0] = np.nan
    out = load(write(tmp_path / "n.wav", x, format="WAV", subtype="FLOAT"))
    assert out.notes == ("1 non-finite samples set to 0", "stereo mixed down")
    assert out.samples[7] == pytest.approx(x[7, 1] / 2)


def test_many_nan_samples_skip_the_clip(tmp_path, rng):
    x = tone()
    x[rng.choice(N, size=400, replace=False)] = np.nan  # 10 % > 1 %
    out = load(write(tmp_path / "n.wav", x, format="WAV", subtype="FLOAT"))
    assert out.samples is None
    assert out.reason.startswith("non-finite samples: 400 of 4000")
    # The threshold is a parameter.
    assert load(tmp_path / "n.wav", max_nonfinite_fraction=0.2).ok


def test_all_zero_clip_is_silent(tmp_path):
    out = load(write(tmp_path / "z.aiff", np.zeros(N, np.float32)))
    assert out.samples is None and out.reason == "silent"


def test_clip_silent_inside_the_kept_window_is_skipped(tmp_path):
    x = np.zeros(6000, np.float32)
    x[5000:] = tone(n=1000)
    out = load(write(tmp_path / "z.wav", x, format="WAV"))
    assert out.samples is None and out.reason.startswith("silent: all zero in the first 2 s")


def test_too_short_clip_is_skipped(tmp_path):
    path = write(tmp_path / "s.wav", tone(n=5), format="WAV")
    out = load(path, min_samples=10)
    assert out.samples is None
    assert out.reason == "too short: 5 samples at 2000 Hz < min_samples=10"
    assert load(path).notes == ("padded 5->4000 samples",)  # min_samples=1 keeps it


def test_too_short_counts_samples_after_resampling(tmp_path):
    path = write(tmp_path / "s.wav", tone(n=100, sr=8000), sr=8000, format="WAV")  # 25 samples at 2 kHz
    assert load(path, min_samples=26).reason.startswith("too short: 25 samples")
    assert load(path, min_samples=25).ok


def test_missing_file(tmp_path):
    out = load(tmp_path / "nope.aiff")
    assert out == Decoded(samples=None, reason="missing file", notes=())


def test_zero_byte_file(tmp_path):
    (tmp_path / "e.aiff").write_bytes(b"")
    assert load(tmp_path / "e.aiff").reason == "empty file (0 bytes)"


def test_header_only_file_is_empty(tmp_path):
    out = load(write(tmp_path / "e.aiff", np.zeros(0, np.float32)))
    assert out.samples is None and out.reason == "empty: no audio frames"


def test_text_file_named_aiff_is_unreadable(tmp_path):
    (tmp_path / "t.aiff").write_text("clip_name,label\ntrain1.aiff,0\n" * 20)
    out = load(tmp_path / "t.aiff")
    assert out.samples is None
    assert out.reason == "unreadable: format not recognised"


def test_directory_is_unreadable(tmp_path):
    assert load(tmp_path).reason == "unreadable: is a directory"


def test_unreadable_permissions(tmp_path):
    path = write(tmp_path / "p.aiff", tone())
    os.chmod(path, 0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as a user (e.g. root) whom chmod 000 does not stop")
        out = load(path)
        assert out.samples is None and out.reason == "unreadable: permission denied"
    finally:
        os.chmod(path, 0o644)


def test_permission_error_gives_unreadable_even_as_root(tmp_path, monkeypatch):
    # chmod cannot stop root, so inject the error the OS would raise.
    path = write(tmp_path / "p.aiff", tone())

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("pipeline.data.audio.open", denied, raising=False)  # files read through a file object
    monkeypatch.setattr("pipeline.data.audio.os.open", denied)  # small files read in one os.read
    assert load(path).reason == "unreadable: permission denied"


@pytest.mark.parametrize("keep", [0.5, 0.9, -1])
@pytest.mark.parametrize("format,suffix", [("AIFF", "aiff"), ("WAV", "wav")])
def test_truncated_aiff_and_wav_are_detected_from_the_header(tmp_path, keep, format, suffix):
    # libsndfile clamps its frame count to the data on disk and reads without
    # error, so only the header's own count reveals the truncation.
    path = write(tmp_path / f"t.{suffix}", tone(), format=format)
    size = os.path.getsize(path)
    cut(path, int(size * keep) if isinstance(keep, float) else keep)
    assert sf.info(path).frames < N  # what libsndfile says: no error, fewer frames
    out = load(path)
    assert out.samples is None
    assert out.reason.startswith("truncated: read ")
    assert out.reason.endswith(f" of {N} frames")


def test_aiff_cut_inside_the_header_is_truncated(tmp_path):
    path = cut(write(tmp_path / "t.aiff", tone()), 40)  # FORM + COMM, no SSND
    out = load(path)
    assert out.samples is None
    assert out.reason.startswith(f"truncated: read 0 of {N} frames; file has 40 of the ")


@pytest.mark.parametrize("keep", [0.5, -1])
def test_truncated_flac_is_detected(tmp_path, keep):
    # A cut FLAC opens with the full STREAMINFO count, then every read raises.
    path = write(tmp_path / "t.flac", tone(), format="FLAC")
    size = os.path.getsize(path)
    cut(path, int(size * keep) if isinstance(keep, float) else keep)
    out = load(path)
    assert out.samples is None
    assert out.reason.startswith(f"truncated: read 0 of {N} frames (")


def test_bad_files_never_raise(tmp_path, rng):
    (tmp_path / "zero.aiff").write_bytes(b"")
    (tmp_path / "junk.flac").write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    (tmp_path / "fake.flac").write_bytes(b"fLaC" + rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    (tmp_path / "riff.wav").write_bytes(b"RIFF\xff\xff\xff\xffWAVEfmt \x10\x00\x00\x00" + b"\x00" * 3)
    (tmp_path / "form.aiff").write_bytes(b"FORM\x00\x00\x00\x04AIFF")
    for path in sorted(tmp_path.iterdir()):
        out = load(path)
        assert isinstance(out, Decoded) and out.samples is None and out.reason, path.name


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sample_rate": 0},
        {"sample_rate": 2000.5},
        {"duration": 0.0},
        {"duration": float("nan")},
        {"min_samples": 0},
        {"max_nonfinite_fraction": 1.5},
    ],
)
def test_bad_parameters_raise(tmp_path, kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        load(tmp_path / "any.aiff", **kwargs)


# ----------------------------------------------------------------------------- hostile files (issue 14)
#
# Each file is judged before its samples are decoded: only regular files are
# opened, the header's rate and channel count must be plausible, and only the
# frames that `duration` needs are decoded whatever length the header claims.


def patch_wav(path, *, rate=None, channels=None):
    """Rewrite the sample rate and/or channel count in a canonical WAV header (44 bytes, fmt at 12)."""
    data = bytearray(open(path, "rb").read())
    assert data[12:16] == b"fmt "
    if rate is not None:
        data[24:28] = int(rate).to_bytes(4, "little")
    if channels is not None:
        bits = int.from_bytes(data[34:36], "little")
        data[22:24] = channels.to_bytes(2, "little")
        data[32:34] = (channels * bits // 8).to_bytes(2, "little")  # block_align
    open(path, "wb").write(bytes(data))
    return str(path)


def peak_allocation(fn):
    """(result of fn(), peak bytes allocated by Python and numpy while it ran)."""
    import tracemalloc

    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def within(seconds, fn):
    """Call ``fn`` and fail (not hang) if it takes more than ``seconds`` of wall time."""
    import signal

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("rate", [1, 19, 2_000_001, 4_000_000_000])
@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24"])  # numpy reader, libsndfile
def test_implausible_sample_rate_in_the_header_is_refused_before_decoding(tmp_path, rate, subtype):
    # The file: a header claiming 1 Hz over long 2 kHz PCM made librosa build
    # 2.4 billion samples (29 s, 9.6 GB) and crash. Here 10 s of PCM keeps the old code's run short.
    path = patch_wav(write(tmp_path / "r.wav", tone(n=20000), format="WAV", subtype=subtype), rate=rate)
    started = time.perf_counter()
    out = load(path)
    assert time.perf_counter() - started < 1.0
    assert out.samples is None
    assert out.reason == f"implausible header: sample rate {rate} Hz (expected 20 Hz to 2,000,000 Hz)"


@pytest.mark.parametrize("subtype,channels", [("PCM_16", 1000), ("PCM_16", 257), ("PCM_24", 300)])
def test_implausible_channel_count_in_the_header_is_refused(tmp_path, subtype, channels):
    path = patch_wav(write(tmp_path / "c.wav", tone(n=60000), format="WAV", subtype=subtype), channels=channels)
    out = load(path)
    assert out.samples is None
    assert out.reason == f"implausible header: {channels} channels (expected 1 to 256)"


def test_plausible_limits_are_accepted(tmp_path):
    for rate in (20, 768_000, 2_000_000):
        assert load(patch_wav(write(tmp_path / f"{rate}.wav", tone(n=20000), format="WAV"), rate=rate)).ok, rate
    x = np.stack([tone()] * 256, axis=1)
    assert load(write(tmp_path / "256.wav", x, format="WAV")).notes == ("256 channels mixed down",)


@pytest.mark.parametrize("reader", ["numpy, in memory", "numpy, from the file", "libsndfile"])
def test_a_long_file_is_decoded_only_as_far_as_the_clip_needs(tmp_path, monkeypatch, reader):
    # A plausible but low rate (25 Hz) over 10 minutes of PCM: resampling the whole file to
    # 2 kHz would make 96 million samples (384 MB, seconds); the clip needs the first 2 s.
    from pipeline.data import audio

    subtype = "PCM_24" if reader == "libsndfile" else "PCM_16"
    path = patch_wav(write(tmp_path / "l.wav", tone(n=1_200_000), format="WAV", subtype=subtype), rate=25)
    if reader == "numpy, from the file":
        monkeypatch.setattr(audio, "_WHOLE_FILE_BYTES", 0)
    started = time.perf_counter()
    out, peak = peak_allocation(lambda: load(path))
    assert time.perf_counter() - started < 1.0
    assert out.ok and out.samples.shape == (N,)
    assert out.notes == ("resampled 25->2000 Hz", "cropped 96000000->4000 samples")  # the whole file's length
    # Files up to 16 MB are read whole (one system call); beyond the bytes read, at most 2 MB.
    read = 0 if reader == "numpy, from the file" else os.path.getsize(path)
    assert peak < read + (2 << 20), (peak, read)


def test_a_long_flac_is_decoded_only_as_far_as_the_clip_needs(tmp_path):
    path = write(tmp_path / "l.flac", tone(n=1_200_000, freq=37.0), format="FLAC")
    out, peak = peak_allocation(lambda: load(path))
    assert out.ok and out.notes == ("cropped 1200000->4000 samples",)
    np.testing.assert_allclose(out.samples, tone(freq=37.0), atol=1.0 / 32768)
    assert peak < 1 << 20, peak  # the whole file decoded would be 4.8 MB of float32


@pytest.mark.parametrize("file_rate", [100, 1000, 8000, 44100, 768_000])
def test_the_decoded_window_resamples_like_the_whole_file(tmp_path, file_rate):
    # Only the window (duration + the resampler's margin) is decoded; the clip must equal the
    # start of the whole file resampled, to within float rounding.
    import librosa

    n = 6 * file_rate
    x = (0.3 * np.random.default_rng(file_rate).standard_normal(n)).clip(-1, 1).astype(np.float32)
    path = write(tmp_path / "w.wav", x, sr=file_rate, format="WAV", subtype="FLOAT")
    out = load(path)
    whole = librosa.resample(x, orig_sr=file_rate, target_sr=SR, res_type="soxr_hq")
    assert out.ok and out.notes == (f"resampled {file_rate}->{SR} Hz", f"cropped {len(whole)}->{N} samples")
    np.testing.assert_allclose(out.samples, whole[:N], rtol=0, atol=1e-6)


def test_a_window_too_large_for_memory_is_refused(tmp_path, monkeypatch):
    from pipeline.data import audio

    monkeypatch.setattr(audio, "MAX_WINDOW_BYTES", 8000)  # 2000 frames as float32
    out = load(write(tmp_path / "w.wav", tone(), format="WAV"))
    assert out.samples is None and out.reason.startswith("too long: the first 2 s at 2000 Hz are 4000 frames")


@pytest.mark.parametrize("kind", ["fifo", "link to a fifo", "character device", "socket"])
def test_only_regular_files_are_opened(tmp_path, kind):
    # Opening a named pipe blocks until a writer appears: the feature stage hung forever.
    import socket

    path = tmp_path / "x.wav"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "link to a fifo":
        os.mkfifo(tmp_path / "pipe")
        os.symlink(tmp_path / "pipe", path)
    elif kind == "character device":
        os.symlink("/dev/null", path)
    else:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
    expected = {"fifo": "a named pipe (FIFO)", "link to a fifo": "a named pipe (FIFO)",
                "character device": "a character device", "socket": "a socket"}[kind]
    out = within(5, lambda: load(path))
    assert out.samples is None and out.reason == f"unreadable: is {expected}, not a regular file"


def test_a_dangling_symlink_is_missing(tmp_path):
    os.symlink(tmp_path / "gone.wav", tmp_path / "x.wav")
    assert load(tmp_path / "x.wav").reason == "missing file"


@pytest.mark.parametrize("format,subtype", [("WAV", "FLOAT"), ("AIFF", "FLOAT"), ("WAV", "DOUBLE")])
def test_float_samples_of_absurd_magnitude_are_refused(tmp_path, format, subtype):
    # 1e30 is finite in float32, but its power spectrum overflows: non-finite features in the cache.
    x = tone()
    x[100:110] = 1e30
    out = load(write(tmp_path / f"f.{format.lower()}", x, format=format, subtype=subtype))
    assert out.samples is None
    assert out.reason.startswith("absurd sample values: up to 1.0e+30; float audio is expected within about +-1")
    x = np.stack([tone(), tone()], axis=1)
    x[5, 1] = -3e38  # in one channel of two: the mixdown must not overflow first
    out = load(write(tmp_path / f"g.{format.lower()}", x, format=format, subtype=subtype))
    assert out.reason.startswith("absurd sample values: up to 3.0e+38")


def test_loud_but_plausible_float_samples_are_kept(tmp_path):
    out = load(write(tmp_path / "f.wav", tone(amplitude=900.0), format="WAV", subtype="FLOAT"))
    assert out.ok and np.abs(out.samples).max() == pytest.approx(900.0, rel=1e-3)


@pytest.mark.parametrize("large", [False, True])
def test_a_file_swapped_for_a_pipe_after_it_was_opened_is_decoded_from_the_open_file(tmp_path, monkeypatch, large):
    # The path is never reopened: a file swapped for a named pipe after the open made the
    # second open (by name, for files over _WHOLE_FILE_BYTES) block forever.
    from pipeline.data import audio

    if large:
        monkeypatch.setattr(audio, "_WHOLE_FILE_BYTES", 0)
    for fmt, subtype in (("AIFF", "PCM_16"), ("FLAC", "PCM_16")):  # plain PCM (numpy) and libsndfile
        path = write(tmp_path / f"x.{fmt.lower()}", tone(), format=fmt, subtype=subtype)
        expected = load(path)
        real_open = os.open

        def open_then_swap(name, flags, *args, **kwargs):
            fd = real_open(name, flags, *args, **kwargs)
            if os.fspath(name) == path:
                os.unlink(path)
                os.mkfifo(path)
            return fd

        monkeypatch.setattr(os, "open", open_then_swap)
        out = within(5, lambda: load(path))
        monkeypatch.setattr(os, "open", real_open)
        assert out.ok, out.reason
        np.testing.assert_array_equal(out.samples, expected.samples)


@pytest.mark.parametrize("large", [False, True])
def test_what_was_opened_is_judged_by_its_fstat(tmp_path, monkeypatch, large):
    # A pipe that passed the stat (swapped in between) is refused by the fstat of the open descriptor.
    from pipeline.data import audio

    if large:
        monkeypatch.setattr(audio, "_WHOLE_FILE_BYTES", 0)
    good = write(tmp_path / "good.wav", tone(), format="WAV")
    path = str(tmp_path / "x.wav")
    os.mkfifo(path)
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: real_stat(good if os.fspath(p) == path else p, *a, **k))
    out = within(5, lambda: load(path))
    assert out.samples is None and out.reason == "unreadable: is a named pipe (FIFO), not a regular file"


def test_a_file_that_grows_while_read_is_refused_not_read_without_bound(tmp_path, monkeypatch):
    from pipeline.data import audio

    path = write(tmp_path / "x.wav", tone(), format="WAV")
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert audio._read_fd(fd, size - 10) is None  # more than the fstat said: at most size + 1 bytes read
    finally:
        os.close(fd)
    real_fstat = os.fstat

    def smaller(fd):
        st = real_fstat(fd)
        return os.stat_result((*st[:6], st.st_size - 100, *st[7:10]))

    monkeypatch.setattr(os, "fstat", smaller)
    out = load(path)
    assert out.samples is None and out.reason == "unreadable: the file grew while it was read (changed while reading)"


@pytest.mark.parametrize("raw", [b"\x7f\xff" + b"\xc0" + b"\0" * 7,  # NaN
                                 b"\x7f\xff" + b"\x80" + b"\0" * 7,  # infinity
                                 b"\x7f\xfe" + b"\x80" + b"\0" * 7,  # 2**16384: overflows a float
                                 b"\x00\x01" + b"\x80" + b"\0" * 7])  # tiny
def test_an_aiff_rate_of_absurd_bits_is_an_implausible_header(tmp_path, raw):
    path = write(tmp_path / "x.aiff", tone())
    data = bytearray(open(path, "rb").read())
    at = data.index(b"COMM") + 8 + 8  # the 80-bit rate after channels, frames, bits
    data[at:at + 10] = raw
    open(path, "wb").write(bytes(data))
    out = load(path)
    assert out.samples is None and out.reason.startswith("implausible header: sample rate"), out.reason


def test_a_header_that_makes_libsndfile_seek_before_the_start_is_skipped_quietly(tmp_path, capfd, monkeypatch):
    """A damaged AIFF ('SSND' chunk renamed) made libsndfile seek to -1: the file raised inside soundfile's C
    callback and Python printed 'Exception ignored from cffi callback' with a traceback on the console."""
    import io as _io

    import soundfile as sf

    from pipeline.data import audio

    buf = _io.BytesIO()
    sf.write(buf, np.random.default_rng(0).standard_normal(4000) * 0.1, 2000, format="AIFF", subtype="PCM_16")
    data = bytearray(buf.getvalue())
    data[data.index(b"SSND")] = ord("s")
    path = tmp_path / "bad.aiff"
    path.write_bytes(bytes(data))
    capfd.readouterr()
    ignored = []  # where Python sends an exception raised in a C callback (and prints it, outside pytest)
    monkeypatch.setattr(sys, "unraisablehook", ignored.append)
    from_file = load_clip(str(path), sample_rate=2000, duration=2.0)
    from_bytes = audio._decode(str(path), len(data), bytes(data), sample_rate=2000, duration=2.0)
    for decoded in (from_file, from_bytes):
        assert decoded.reason and decoded.reason.startswith("unreadable"), decoded.reason
    err = capfd.readouterr().err
    assert not ignored and "Exception ignored" not in err and "Traceback" not in err, (ignored, err)
