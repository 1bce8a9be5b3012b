//! The image analysis of the semantic test: what a picture shows, read back with simple,
//! documented rules, to compare with the caption it was generated from.
//!
//! 1. **Background**: the palette colour nearest to the median of the 1-pixel border.
//! 2. **Foreground mask**: pixels farther than 60 (Euclidean, RGB 0–255) from that background
//!    colour.
//! 3. **Colour**: the palette colour (other than the background) nearest to the mean of the
//!    mask's core: its pixels at least 70 % as far from the background colour as the farthest.
//! 4. **Count**: 4-connected components of the mask of at least 12 pixels (at most 3 counted).
//! 5. **Position** (single shapes): the slot ([`Position`]) nearest to the largest component's
//!    centroid.
//! 6. **Shape** (largest component): its pixels at least halfway from the background colour to
//!    the shape's colour (the mean of step 3) — where a blurred edge keeps the edge's place — are
//!    compared with each of the four shapes as the dataset draws them, centred on the same
//!    centroid with the radius that gives the same area; the shape with the highest
//!    intersection-over-union wins. (The first rule, a fill ratio of the bounding box, read every
//!    slightly blurred triangle, star or square as a circle.)
//! 7. **Size**: large when the component's bounding box is at least 21 pixels on its longer side.

use image::RgbImage;

use crate::dataset::{Position, Scene, Shape, COLORS};

/// What [`analyze`] reads from a picture.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub background: usize,
    /// `None` when nothing stands out from the background.
    pub color: Option<usize>,
    pub count: usize,
    pub position: Option<Position>,
    pub shape: Option<Shape>,
    pub large: Option<bool>,
}

fn dist2(a: [u8; 3], b: [f32; 3]) -> f32 {
    (0..3).map(|c| (a[c] as f32 - b[c]).powi(2)).sum()
}

fn nearest(rgb: [f32; 3], exclude: Option<usize>) -> usize {
    (0..COLORS.len())
        .filter(|i| Some(*i) != exclude)
        .min_by(|&a, &b| dist2(COLORS[a].1, rgb).total_cmp(&dist2(COLORS[b].1, rgb)))
        .unwrap()
}

/// Reads a picture (see the module docs for the rules).
pub fn analyze(img: &RgbImage) -> Reading {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let px = |x: usize, y: usize| img.get_pixel(x as u32, y as u32).0;
    // 1. background: per-channel median of the border
    let mut border: Vec<[u8; 3]> = Vec::new();
    for x in 0..w {
        border.push(px(x, 0));
        border.push(px(x, h - 1));
    }
    for y in 1..h - 1 {
        border.push(px(0, y));
        border.push(px(w - 1, y));
    }
    let median = |c: usize| {
        let mut v: Vec<u8> = border.iter().map(|p| p[c]).collect();
        v.sort_unstable();
        v[v.len() / 2] as f32
    };
    let background = nearest([median(0), median(1), median(2)], None);
    let bg = COLORS[background].1.map(|v| v as f32);
    // 2. mask
    let mask: Vec<bool> = (0..w * h).map(|i| dist2(px(i % w, i / w), bg) > 60.0 * 60.0).collect();
    let on: Vec<usize> = (0..w * h).filter(|&i| mask[i]).collect();
    if on.len() < 12 {
        return Reading { background, color: None, count: 0, position: None, shape: None, large: None };
    }
    // 3. colour: the mean of the mask's core (pixels at least 70 % as far from the background
    // as the farthest one), so blended edges do not shift it
    let far = on.iter().map(|&i| dist2(px(i % w, i / w), bg)).fold(0f32, f32::max);
    let core: Vec<usize> = on.iter().copied().filter(|&i| dist2(px(i % w, i / w), bg) >= 0.49 * far).collect();
    let mut mean = [0f32; 3];
    for &i in &core {
        let p = px(i % w, i / w);
        for c in 0..3 {
            mean[c] += p[c] as f32 / core.len() as f32;
        }
    }
    let color = nearest(mean, Some(background));
    // 4. components
    let mut label = vec![usize::MAX; w * h];
    let mut components: Vec<Vec<usize>> = Vec::new();
    for &start in &on {
        if label[start] != usize::MAX {
            continue;
        }
        let id = components.len();
        let mut stack = vec![start];
        let mut members = Vec::new();
        label[start] = id;
        while let Some(i) = stack.pop() {
            members.push(i);
            let (x, y) = (i % w, i / w);
            let neighbours = [(x > 0).then(|| i - 1), (x + 1 < w).then(|| i + 1), (y > 0).then(|| i - w), (y + 1 < h).then(|| i + w)];
            for j in neighbours.into_iter().flatten() {
                if mask[j] && label[j] == usize::MAX {
                    label[j] = id;
                    stack.push(j);
                }
            }
        }
        components.push(members);
    }
    components.retain(|c| c.len() >= 12);
    components.sort_by_key(|c| std::cmp::Reverse(c.len()));
    let count = components.len().min(3);
    let Some(largest) = components.first() else {
        return Reading { background, color: Some(color), count: 0, position: None, shape: None, large: None };
    };
    // 5. position
    let n = largest.len() as f32;
    let cx = largest.iter().map(|&i| (i % w) as f32 + 0.5).sum::<f32>() / n;
    let cy = largest.iter().map(|&i| (i / w) as f32 + 0.5).sum::<f32>() / n;
    let position = Position::ALL
        .into_iter()
        .min_by(|a, b| {
            let d = |p: &Position| {
                let (x, y) = p.center();
                (x - cx).powi(2) + (y - cy).powi(2)
            };
            d(a).total_cmp(&d(b))
        })
        .unwrap();
    // 6. shape, 7. size
    let (x0, x1) = largest.iter().map(|&i| i % w).fold((w, 0), |(a, b), x| (a.min(x), b.max(x)));
    let (y0, y1) = largest.iter().map(|&i| i / w).fold((h, 0), |(a, b), y| (a.min(y), b.max(y)));
    let (bw, bh) = ((x1 - x0 + 1) as f32, (y1 - y0 + 1) as f32);
    // the half-way mask: t = projection of (pixel − background) on (shape colour − background)
    let dv: [f32; 3] = std::array::from_fn(|c| mean[c] - bg[c]);
    let dv2 = dv.iter().map(|v| v * v).sum::<f32>().max(1e-6);
    let half = |i: usize| {
        let p = px(i % w, i / w);
        (0..3).map(|c| (p[c] as f32 - bg[c]) * dv[c]).sum::<f32>() / dv2 >= 0.5
    };
    let mut body: Vec<usize> = largest.iter().copied().filter(|&i| half(i)).collect();
    if body.len() < 4 {
        body = largest.clone();
    }
    let shape = best_template(&body, w, h);
    Reading { background, color: Some(color), count, position: Some(position), shape: Some(shape), large: Some(bw.max(bh) >= 21.0) }
}

/// The shape whose drawing (same centroid, same area) overlaps the pixel set `body` most
/// (intersection over union).
fn best_template(body: &[usize], w: usize, h: usize) -> Shape {
    let n = body.len() as f32;
    let cx = body.iter().map(|&i| (i % w) as f32 + 0.5).sum::<f32>() / n;
    let cy = body.iter().map(|&i| (i / w) as f32 + 0.5).sum::<f32>() / n;
    let mut inside = vec![false; w * h];
    for &i in body {
        inside[i] = true;
    }
    let iou = |shape: Shape| {
        let r = (n / shape.area()).sqrt();
        let (sx, sy) = (cx, cy - shape.centroid_offset() * r);
        // only pixels near the shape can be covered
        let (x0, x1) = ((sx - r - 1.0).max(0.0) as usize, ((sx + r + 1.0) as usize).min(w - 1));
        let (y0, y1) = ((sy - r - 1.0).max(0.0) as usize, ((sy + r + 1.0) as usize).min(h - 1));
        let mut both = 0usize;
        let mut drawn = 0usize;
        for y in y0..=y1 {
            for x in x0..=x1 {
                if shape.covers(x, y, sx, sy, r) {
                    drawn += 1;
                    both += inside[y * w + x] as usize;
                }
            }
        }
        both as f32 / (drawn + body.len() - both) as f32
    };
    Shape::ALL.into_iter().max_by(|a, b| iou(*a).total_cmp(&iou(*b))).unwrap()
}

/// Per-attribute agreement of a reading with the scene that was asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Agreement {
    pub color: bool,
    pub background: bool,
    pub shape: bool,
    pub count: bool,
    /// Single shapes only; `None` for counts above 1.
    pub position: Option<bool>,
}

/// Compares what [`analyze`] read with the scene.
pub fn agreement(scene: &Scene, reading: &Reading) -> Agreement {
    Agreement {
        color: reading.color == Some(scene.color),
        background: reading.background == scene.background,
        shape: reading.shape == Some(scene.shape),
        count: reading.count == scene.count,
        position: (scene.count == 1).then(|| reading.position == Some(scene.positions[0])),
    }
}

/// Per-attribute accuracy over many pictures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Accuracy {
    /// Hits for colour, background, shape, count, position.
    pub hits: [usize; 5],
    pub pictures: usize,
    /// Pictures of a single shape (the position's denominator).
    pub singles: usize,
}

impl Accuracy {
    pub const ATTRIBUTES: [&'static str; 5] = ["colour", "background", "shape", "count", "position"];

    pub fn add(&mut self, a: Agreement) {
        self.pictures += 1;
        for (k, hit) in [a.color, a.background, a.shape, a.count].into_iter().enumerate() {
            self.hits[k] += hit as usize;
        }
        if let Some(p) = a.position {
            self.singles += 1;
            self.hits[4] += p as usize;
        }
    }

    /// `(attribute, hits, out of)` for each attribute.
    pub fn rates(&self) -> Vec<(&'static str, usize, usize)> {
        (0..5).map(|k| (Self::ATTRIBUTES[k], self.hits[k], if k == 4 { self.singles } else { self.pictures })).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::samples;

    /// The analysis must read the generator's own pictures back almost perfectly, or the
    /// semantic test would measure the analysis rather than the model.
    #[test]
    fn reads_back_rendered_scenes() {
        let data = samples(7, 600, false);
        let mut acc = Accuracy::default();
        for (scene, img) in &data {
            acc.add(agreement(scene, &analyze(img)));
        }
        for (what, hits, of) in acc.rates() {
            println!("{what}: {hits}/{of}");
            assert!(hits as f64 / of as f64 >= 0.97, "{what}: {hits}/{of}");
        }
    }

    /// A decoder blurs edges: the shapes must still read right after a Gaussian blur of σ = 1
    /// pixel (the first rule, a fill ratio, read most such triangles and stars as circles).
    #[test]
    fn reads_shapes_through_blur() {
        let data = samples(8, 400, false);
        let mut acc = Accuracy::default();
        for (scene, img) in &data {
            acc.add(agreement(scene, &analyze(&image::imageops::blur(img, 1.0))));
        }
        for (what, hits, of) in acc.rates() {
            println!("{what}: {hits}/{of}");
            assert!(hits as f64 / of as f64 >= 0.95, "{what}: {hits}/{of}");
        }
    }

    #[test]
    fn captions_and_split() {
        let mut rng = crate::dataset::SplitMix64(1);
        for held_out in [false, true] {
            for _ in 0..200 {
                let s = Scene::random(&mut rng, held_out);
                assert_eq!(crate::dataset::is_held_out(s.color, s.shape, s.background), held_out);
                assert_ne!(s.color, s.background);
                assert_eq!(s.positions.len(), s.count);
            }
        }
        let s = Scene { shape: Shape::Circle, color: 0, background: 2, count: 1, large: false, positions: vec![Position::TopLeft] };
        assert_eq!(s.caption(), "a small red circle in the top left on a blue background");
        assert_eq!(s.caption_with(false, false), "a red circle on a blue background");
        let s = Scene { shape: Shape::Triangle, color: 3, background: 7, count: 2, large: false, positions: vec![Position::TopLeft, Position::BottomRight] };
        assert_eq!(s.caption(), "two yellow triangles on a black background");
    }
}
