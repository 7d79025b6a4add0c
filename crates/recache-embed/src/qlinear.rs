//! Linear layers with Q8_0 weights (candle's quantized matmul): a quarter of
//! the f32 weights' memory traffic, which is what bounds a short embedding.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

pub use candle_nn::LayerNorm;

#[derive(Debug, Clone)]
pub struct Linear {
    weight: QMatMul,
    bias: Option<Tensor>,
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.weight.forward(x)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

pub fn linear(d_in: usize, d_out: usize, vb: VarBuilder) -> Result<Linear> {
    let w = vb.get((d_out, d_in), "weight")?;
    let bias = vb.get(d_out, "bias").ok();
    let q = QTensor::quantize(&w, GgmlDType::Q8_0)?;
    Ok(Linear {
        weight: QMatMul::from_qtensor(q)?,
        bias,
    })
}

pub fn layer_norm<C: Into<candle_nn::LayerNormConfig>>(size: usize, c: C, vb: VarBuilder) -> Result<LayerNorm> {
    candle_nn::layer_norm(size, c, vb)
}
