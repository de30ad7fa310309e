// RoIAlign on the CPU, split over torch's intra-op threads, bit for bit torchvision's.
//
// torchvision's CPU kernel runs on one thread, and RoIAlign is most of a cascade's ROI-head
// time: every stage pools its own boxes. Each output value here comes from the same float
// operations in the same order as in torchvision (roi_align_kernel.cpp), so the outputs and
// gradients are identical and only the wall time changes:
// - forward: boxes are split among the threads; each output value is written once.
// - backward: channels are split among the threads. Every input-gradient value then
//   receives its additions from one thread, in torchvision's order (box, bin, sample).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

// The bilinear weights of one sampling point and the 4 pixels they weigh.
template <typename T>
struct Sample {
  bool inside;  // false: off the feature map; then all positions and weights are 0
  int pos1, pos2, pos3, pos4;
  T w1, w2, w3, w4;
};

// Where one box lies on the feature map, in the arithmetic torchvision uses.
template <typename T>
struct BoxGeometry {
  int batch_index;
  T start_h, start_w, bin_h, bin_w;
  int grid_h, grid_w;

  BoxGeometry(const T* roi, T spatial_scale, int pooled_h, int pooled_w, int sampling_ratio,
              bool aligned) {
    batch_index = static_cast<int>(roi[0]);
    // No rounding of the box's corners: the half-pixel offset is what "aligned" means.
    const T offset = aligned ? static_cast<T>(0.5) : static_cast<T>(0.0);
    start_w = roi[1] * spatial_scale - offset;
    start_h = roi[2] * spatial_scale - offset;
    const T end_w = roi[3] * spatial_scale - offset;
    const T end_h = roi[4] * spatial_scale - offset;
    T width = end_w - start_w;
    T height = end_h - start_h;
    if (!aligned) {  // the legacy op pools a malformed box as 1x1
      width = std::max(width, static_cast<T>(1.));
      height = std::max(height, static_cast<T>(1.));
    }
    bin_h = height / static_cast<T>(pooled_h);
    bin_w = width / static_cast<T>(pooled_w);
    grid_h = sampling_ratio > 0 ? sampling_ratio : static_cast<int>(std::ceil(height / pooled_h));
    grid_w = sampling_ratio > 0 ? sampling_ratio : static_cast<int>(std::ceil(width / pooled_w));
  }

  // The sampling points of every bin, bin by bin (ph, pw), each bin's row by row (iy, ix).
  void samples(int height, int width, int pooled_h, int pooled_w,
               std::vector<Sample<T>>& out) const {
    out.resize(static_cast<size_t>(pooled_h) * pooled_w * grid_h * grid_w);
    size_t i = 0;
    for (int ph = 0; ph < pooled_h; ph++) {
      for (int pw = 0; pw < pooled_w; pw++) {
        for (int iy = 0; iy < grid_h; iy++) {
          const T yy = start_h + ph * bin_h +
              static_cast<T>(iy + .5f) * bin_h / static_cast<T>(grid_h);
          for (int ix = 0; ix < grid_w; ix++) {
            const T xx = start_w + pw * bin_w +
                static_cast<T>(ix + .5f) * bin_w / static_cast<T>(grid_w);
            out[i++] = sample_at(yy, xx, height, width);
          }
        }
      }
    }
  }

  static Sample<T> sample_at(T y, T x, int height, int width) {
    Sample<T> s{};
    // Written as "not inside" so that a NaN coordinate also lands here.
    if (!(y >= -1.0 && y <= height && x >= -1.0 && x <= width)) {
      s.inside = false;
      return s;
    }
    s.inside = true;
    if (y <= 0) y = 0;
    if (x <= 0) x = 0;
    int y_low = static_cast<int>(y), x_low = static_cast<int>(x), y_high, x_high;
    if (y_low >= height - 1) {
      y_high = y_low = height - 1;
      y = static_cast<T>(y_low);
    } else {
      y_high = y_low + 1;
    }
    if (x_low >= width - 1) {
      x_high = x_low = width - 1;
      x = static_cast<T>(x_low);
    } else {
      x_high = x_low + 1;
    }
    const T ly = y - y_low, lx = x - x_low;
    const T hy = 1. - ly, hx = 1. - lx;
    s.w1 = hy * hx;
    s.w2 = hy * lx;
    s.w3 = ly * hx;
    s.w4 = ly * lx;
    s.pos1 = y_low * width + x_low;
    s.pos2 = y_low * width + x_high;
    s.pos3 = y_high * width + x_low;
    s.pos4 = y_high * width + x_high;
    return s;
  }
};

template <typename T>
void forward_boxes(int64_t begin, int64_t end, const T* input, const T* rois, T spatial_scale,
                   int channels, int height, int width, int pooled_h, int pooled_w,
                   int sampling_ratio, bool aligned, T* output) {
  std::vector<Sample<T>> samples;
  const int bins = pooled_h * pooled_w;
  for (int64_t n = begin; n < end; n++) {
    const BoxGeometry<T> box(rois + n * 5, spatial_scale, pooled_h, pooled_w, sampling_ratio,
                             aligned);
    box.samples(height, width, pooled_h, pooled_w, samples);
    const int per_bin = box.grid_h * box.grid_w;
    const T count = static_cast<T>(std::max(per_bin, 1));
    for (int c = 0; c < channels; c++) {
      const T* plane = input + (static_cast<int64_t>(box.batch_index) * channels + c) * height * width;
      T* out = output + (n * channels + c) * bins;
      const Sample<T>* s = samples.data();
      for (int bin = 0; bin < bins; bin++) {
        T value = 0.;
        for (int i = 0; i < per_bin; i++, s++) {
          // An outside point weighs pixel 0 by zero, as in torchvision: not skipping it
          // keeps the result bitwise equal, even where pixel 0 is inf or NaN.
          value += s->w1 * plane[s->pos1] + s->w2 * plane[s->pos2] +
              s->w3 * plane[s->pos3] + s->w4 * plane[s->pos4];
        }
        value /= count;
        out[bin] = value;
      }
    }
  }
}

template <typename T>
void backward_channels(int64_t begin, int64_t end, const T* grad, const int64_t* grad_strides,
                       const T* rois, int64_t num_rois, T spatial_scale, int channels,
                       int height, int width, int pooled_h, int pooled_w, int sampling_ratio,
                       bool aligned, T* grad_input) {
  std::vector<Sample<T>> samples;
  for (int64_t n = 0; n < num_rois; n++) {
    const BoxGeometry<T> box(rois + n * 5, spatial_scale, pooled_h, pooled_w, sampling_ratio,
                             aligned);
    box.samples(height, width, pooled_h, pooled_w, samples);
    const int per_bin = box.grid_h * box.grid_w;
    const T count = static_cast<T>(per_bin);
    for (int64_t c = begin; c < end; c++) {
      T* plane = grad_input + (static_cast<int64_t>(box.batch_index) * channels + c) * height * width;
      const T* grad_nc = grad + n * grad_strides[0] + c * grad_strides[1];
      const Sample<T>* s = samples.data();
      for (int ph = 0; ph < pooled_h; ph++) {
        for (int pw = 0; pw < pooled_w; pw++) {
          const T g = grad_nc[ph * grad_strides[2] + pw * grad_strides[3]];
          for (int i = 0; i < per_bin; i++, s++) {
            if (!s->inside) continue;
            const T g1 = g * s->w1 / count, g2 = g * s->w2 / count;
            const T g3 = g * s->w3 / count, g4 = g * s->w4 / count;
            plane[s->pos1] += g1;
            plane[s->pos2] += g2;
            plane[s->pos3] += g3;
            plane[s->pos4] += g4;
          }
        }
      }
    }
  }
}

void check_inputs(const at::Tensor& x, const at::Tensor& rois) {
  TORCH_CHECK(x.device().is_cpu() && rois.device().is_cpu(), "roi_align_cpu: CPU tensors only");
  TORCH_CHECK(x.scalar_type() == rois.scalar_type(), "roi_align_cpu: input and rois differ in dtype");
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, "roi_align_cpu: rois must be K x 5");
}

at::Tensor roi_align_forward(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                             int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
                             bool aligned) {
  check_inputs(input, rois);
  TORCH_CHECK(input.dim() == 4, "roi_align_cpu: input must be N x C x H x W");
  const int64_t num_rois = rois.size(0);
  const int64_t channels = input.size(1), height = input.size(2), width = input.size(3);
  at::Tensor output = at::empty({num_rois, channels, pooled_h, pooled_w}, input.options());
  if (output.numel() == 0) return output;
  const at::Tensor x = input.contiguous(), r = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "roi_align_cpu_forward", [&] {
    // About one box's channels of work per task is plenty to hide the scheduling.
    at::parallel_for(0, num_rois, 1, [&](int64_t begin, int64_t end) {
      forward_boxes<scalar_t>(begin, end, x.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(),
                              static_cast<scalar_t>(spatial_scale), channels, height, width,
                              pooled_h, pooled_w, sampling_ratio, aligned,
                              output.data_ptr<scalar_t>());
    });
  });
  return output;
}

at::Tensor roi_align_backward(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                              int64_t pooled_h, int64_t pooled_w, int64_t batch_size,
                              int64_t channels, int64_t height, int64_t width,
                              int64_t sampling_ratio, bool aligned) {
  check_inputs(grad, rois);
  at::Tensor grad_input = at::zeros({batch_size, channels, height, width}, grad.options());
  if (grad.numel() == 0) return grad_input;
  const at::Tensor r = rois.contiguous();
  const int64_t strides[4] = {grad.stride(0), grad.stride(1), grad.stride(2), grad.stride(3)};
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "roi_align_cpu_backward", [&] {
    at::parallel_for(0, channels, 1, [&](int64_t begin, int64_t end) {
      backward_channels<scalar_t>(begin, end, grad.data_ptr<scalar_t>(), strides,
                                  r.data_ptr<scalar_t>(), r.size(0),
                                  static_cast<scalar_t>(spatial_scale), channels, height, width,
                                  pooled_h, pooled_w, sampling_ratio, aligned,
                                  grad_input.data_ptr<scalar_t>());
    });
  });
  return grad_input;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &roi_align_forward, "RoIAlign forward (CPU, threads over boxes)");
  m.def("backward", &roi_align_backward, "RoIAlign backward (CPU, threads over channels)");
}
