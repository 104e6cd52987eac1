"""SGLang: /health is 503 while starting; memory release/resume with --enable-memory-saver."""

from __future__ import annotations

from typing import ClassVar

from router_app.engines.adapters.base import EngineAdapter

# Every memory type: `tags` None (or empty) means GPU_MEMORY_ALL_TYPES = [kv_cache, weights, cuda_graph].
# Verified in the sglang wheels 0.5.19 and 0.5.23:
# - sglang/srt/constants.py:6-10 GPU_MEMORY_ALL_TYPES;
# - sglang/srt/managers/io_struct.py `tags: Optional[List[str]] = None` in Release/ResumeMemoryOccupationReqInput
#   (0.5.19 lines 1981-1994, 0.5.23 lines 2177-2190);
# - sglang/srt/managers/scheduler_components/weight_updater.py `if tags is None or len(tags) == 0:
#   tags = GPU_MEMORY_ALL_TYPES` on release and on resume (0.5.19 lines 218-219 and 260-261,
#   0.5.23 lines 345-346 and 386-387);
# - sglang/srt/entrypoints/http_server.py routes both for GET and POST, ADMIN_OPTIONAL
#   (0.5.19 lines 1494-1515, 0.5.23 lines 1575-1596).
# Naming only [weights, kv_cache] would leave the CUDA-graph memory on the GPU (engine-audit #6), and resume must
# name exactly what release named (resume removes each tag from `offload_tags`).
ALL_MEMORY: dict[str, object] = {}


class SGLangAdapter(EngineAdapter):
    """Sleep frees all GPU memory with `/release_memory_occupation`; wake resumes it.

    The weights survive the release only with `--enable-weights-cpu-backup` (engine-audit #5); the router's
    wake-integrity check (router_app.engines.instance) restarts the engine cold when they did not.
    """

    supports_sleep: ClassVar[bool] = True

    async def sleep(self) -> None:
        await self._post_ok(
            "/release_memory_occupation", "SGLang memory release", json=ALL_MEMORY, headers=self.auth_headers()
        )

    async def wake(self) -> None:
        await self._post_ok(
            "/resume_memory_occupation", "SGLang memory resume", json=ALL_MEMORY, headers=self.auth_headers()
        )
