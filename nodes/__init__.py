"""ComfyUI layer of the pack: node schemas, conversions, progress/interrupt relay, the engine
registry and the HTTP route. Thin: every node converts its inputs to wan_core's typed values and
calls the engine. Importing this package imports neither torch nor ComfyUI."""
from .conditioning_nodes import Wan22MGAudioEncode, Wan22MGExpertRouter, Wan22MGTextEncode
from .engine_nodes import Wan22MGModelLoader, Wan22MGRelease
from .sampling_nodes import Wan22MGDecode, Wan22MGSampler

# The keys are the identity of saved workflows: never rename them.
NODE_CLASS_MAPPINGS = {
    "Wan22MGModelLoader": Wan22MGModelLoader,
    "Wan22MGExpertRouter": Wan22MGExpertRouter,
    "Wan22MGTextEncode": Wan22MGTextEncode,
    "Wan22MGAudioEncode": Wan22MGAudioEncode,
    "Wan22MGSampler": Wan22MGSampler,
    "Wan22MGDecode": Wan22MGDecode,
    "Wan22MGRelease": Wan22MGRelease,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "Wan22MGModelLoader": "Wan2.2 MG Model Loader",
    "Wan22MGExpertRouter": "Wan2.2 MG Expert Router",
    "Wan22MGTextEncode": "Wan2.2 MG Text Encode",
    "Wan22MGAudioEncode": "Wan2.2 MG Audio Encode",
    "Wan22MGSampler": "Wan2.2 MG Sampler",
    "Wan22MGDecode": "Wan2.2 MG Decode",
    "Wan22MGRelease": "Wan2.2 MG Release GPUs",
}
