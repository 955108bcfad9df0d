//! The vendor log pages: per-engine and per-session figures.

use vpu_ffi::{
    vpu_engine_log, vpu_session_log, VPU_ADMIN_GET_LOG_PAGE, VPU_LOG_ENGINE, VPU_LOG_LSI_SHIFT,
    VPU_LOG_NUMDL_SHIFT, VPU_LOG_SESSION, VPU_MAX_ENGINES,
};

use crate::io::DeviceIoExt;
use crate::nvme::{read_struct, Command};

use super::device::Card;
use super::error::CardError;
use super::types::{EngineStats, SessionId, SessionStats};

impl Card {
    async fn log_page(&self, lid: u32, lsi: u32, len: usize) -> Result<Vec<u8>, CardError> {
        let buf = self.io.alloc_dma(len).map_err(|e| self.dma_err(e))?;
        let numd = (len / 4 - 1) as u32;
        let cmd = Command::new(VPU_ADMIN_GET_LOG_PAGE)
            .cdw10(lid | ((numd & 0xffff) << VPU_LOG_NUMDL_SHIFT))
            .cdw11((numd >> 16) | (lsi << VPU_LOG_LSI_SHIFT))
            .data(&buf, 0, len);
        let c = self
            .controller
            .admin(cmd, self.opts.command_timeout)
            .await?;
        self.status(&c, || format!("get log page {lid:#04x}"))?;
        let mut bytes = vec![0u8; len];
        buf.read(0, &mut bytes);
        Ok(bytes)
    }

    /// Per-engine figures from the engine log.
    pub async fn engine_log(&self) -> Result<Vec<EngineStats>, CardError> {
        let bytes = self
            .log_page(VPU_LOG_ENGINE, 0, std::mem::size_of::<vpu_engine_log>())
            .await?;
        let log: vpu_engine_log =
            read_struct(&bytes).ok_or_else(|| self.bad_completion(0, "short engine log".into()))?;
        let engines = log.engines;
        if engines > VPU_MAX_ENGINES {
            return Err(self.bad_completion(0, format!("engine log claims {engines} engines")));
        }
        let entries = log.engine;
        Ok(entries[..engines as usize]
            .iter()
            .map(|e| EngineStats {
                load: e.load,
                sessions: e.sessions,
                frames: e.frames,
                bytes: e.bytes,
                errors: e.errors,
                busy_ns: e.busy_ns,
                temperature: e.temperature,
                state: e.state,
            })
            .collect())
    }

    /// One session's figures from the session log.
    pub async fn session_log(&self, id: SessionId) -> Result<SessionStats, CardError> {
        let bytes = self
            .log_page(
                VPU_LOG_SESSION,
                id.0,
                std::mem::size_of::<vpu_session_log>(),
            )
            .await?;
        let log: vpu_session_log = read_struct(&bytes)
            .ok_or_else(|| self.bad_completion(id.0, "short session log".into()))?;
        let sid = log.session_id;
        if sid != id.0 {
            return Err(self.bad_completion(id.0, format!("session log of session {sid}")));
        }
        Ok(SessionStats {
            engine: log.engine,
            frames_in: log.frames_in,
            frames_out: log.frames_out,
            bytes_out: log.bytes_out,
            keyframes: log.keyframes,
            errors: log.errors,
        })
    }
}
