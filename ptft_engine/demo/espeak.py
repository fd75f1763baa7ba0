"""Offline speech synthesis: the eSpeak NG library that the `espeakng-loader` wheel ships,
called through its C API with ctypes.

    audio = speak("seven", voice="en-us+f3", rate=160, pitch=60)  # int16 at SAMPLE_RATE

eSpeak keeps one global synthesiser per process, so calls are serialised by a lock and
the library is initialised once per process (again after a fork).
"""
from __future__ import annotations

import ctypes
import os
import threading

import numpy as np

SAMPLE_RATE = 22_050  # eSpeak NG's output rate
# espeak_AUDIO_OUTPUT: SYNCHRONOUS hands each chunk to our callback inside espeak_Synth
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM = {"rate": 1, "volume": 2, "pitch": 3, "range": 4}  # espeak_PARAMETER
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class EspeakError(RuntimeError):
    pass


class _Engine:
    def __init__(self):
        try:
            import espeakng_loader
        except ModuleNotFoundError:
            raise EspeakError("speech synthesis needs the espeakng-loader package "
                              "(pip install 'ptft_engine[demo]')") from None
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                          ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                          espeakng_loader.get_data_path().encode(), 0)
        if rate != SAMPLE_RATE:
            raise EspeakError(f"eSpeak NG failed to initialise (returned {rate}, expected {SAMPLE_RATE} Hz)")
        self.chunks: list[np.ndarray] = []
        self.callback = _CALLBACK(self._collect)  # kept referenced: the library holds the pointer
        self.lib.espeak_SetSynthCallback(self.callback)
        self.pid = os.getpid()

    def _collect(self, wav, n, _events) -> int:
        if n > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0: go on synthesising

    def speak(self, text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise EspeakError(f"eSpeak NG has no voice {voice!r} (language, optionally +variant, e.g. en-us+f3)")
        for name, value in (("rate", rate), ("pitch", pitch)):
            self.lib.espeak_SetParameter(_PARAM[name], int(value), 0)
        self.chunks = []
        data = text.encode("utf-8")
        err = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        self.lib.espeak_Synchronize()
        if err != 0:
            raise EspeakError(f"eSpeak NG could not synthesise {text[:40]!r} (error {err})")
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)


_engine: _Engine | None = None
_lock = threading.Lock()


def speak(text: str, *, voice: str = "en-us", rate: int = 175, pitch: int = 50) -> np.ndarray:
    """`text` read aloud: int16 mono at SAMPLE_RATE. `rate` in words per minute (80..450),
    `pitch` 0..100 (50 = the voice's normal)."""
    global _engine
    with _lock:
        if _engine is None or _engine.pid != os.getpid():
            _engine = _Engine()
        return _engine.speak(text, voice, rate, pitch)
