"""The ground everything else stands on: loading chat models (offline default, GGUF, directories, the hub),
residual-stream hooks by TransformerLens names with the one locked forward pass, the few-row linear mode
for fast CPU decoding, plain chat generation, the built-in and user prompt sets, the refusal judges, and
where build output lives and how it is written atomically. Nothing here knows about SAEs or refusal."""
