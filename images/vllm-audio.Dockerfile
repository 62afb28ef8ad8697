# syntax=docker/dockerfile:1
# The official vLLM OpenAI server image plus vLLM's `audio` extra (librosa, soundfile...),
# which the transcription API (Whisper) needs and which the published
# vllm/vllm-openai images do not always carry. If your tag already has it this layer
# changes nothing. Used by the `vllm-small` service (profile gpu) of compose/.
#
#   docker build -f images/vllm-audio.Dockerfile -t whisper-gateway/vllm-openai-audio:v0.33.0 .

ARG VLLM_VERSION=0.33.0
FROM vllm/vllm-openai:v${VLLM_VERSION}
ARG VLLM_VERSION
RUN python3 -m pip install --no-cache-dir "vllm[audio]==${VLLM_VERSION}"
# The image's entrypoint is `vllm serve`; compose sets it explicitly as well.
ENTRYPOINT ["vllm", "serve"]
