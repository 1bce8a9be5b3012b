//! A synthetic captioned dataset of simple scenes (64×64 RGB), deterministic from a seed: one to
//! three shapes (circle, square, triangle, star) of one of eight colours, small or large, at one
//! of five positions, on a plain background of another colour. Captions name what is drawn,
//! e.g. "a small red circle in the top left on a blue background" or "two yellow triangles on a
//! black background".
//!
//! [`is_held_out`] sets aside about one (colour, shape, background) combination in eleven: the
//! training split never shows those combinations, the semantic test prompts only them. Every
//! colour, shape and background still appears in training in other combinations.

use image::{Rgb, RgbImage};

/// Image side in pixels.
pub const SIZE: u32 = 64;

/// The palette: name and RGB.
pub const COLORS: [(&str, [u8; 3]); 8] = [
    ("red", [220, 40, 40]),
    ("green", [40, 170, 60]),
    ("blue", [40, 80, 220]),
    ("yellow", [240, 215, 40]),
    ("purple", [140, 60, 180]),
    ("orange", [245, 140, 30]),
    ("white", [245, 245, 245]),
    ("black", [25, 25, 25]),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Star,
}

impl Shape {
    pub const ALL: [Shape; 4] = [Shape::Circle, Shape::Square, Shape::Triangle, Shape::Star];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
        }
    }

    pub fn index(self) -> usize {
        Shape::ALL.iter().position(|s| *s == self).unwrap()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Position {
    TopLeft,
    TopRight,
    BottomLeft,
    BottomRight,
    Center,
}

impl Position {
    pub const ALL: [Position; 5] = [Position::TopLeft, Position::TopRight, Position::BottomLeft, Position::BottomRight, Position::Center];

    pub fn name(self) -> &'static str {
        match self {
            Position::TopLeft => "top left",
            Position::TopRight => "top right",
            Position::BottomLeft => "bottom left",
            Position::BottomRight => "bottom right",
            Position::Center => "center",
        }
    }

    /// The centre of the slot in pixels.
    pub fn center(self) -> (f32, f32) {
        match self {
            Position::TopLeft => (17.0, 17.0),
            Position::TopRight => (47.0, 17.0),
            Position::BottomLeft => (17.0, 47.0),
            Position::BottomRight => (47.0, 47.0),
            Position::Center => (32.0, 32.0),
        }
    }
}

/// One scene: what is drawn and where.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    pub shape: Shape,
    /// Index into [`COLORS`].
    pub color: usize,
    /// Index into [`COLORS`], never `color`.
    pub background: usize,
    /// 1 to 3 shapes.
    pub count: usize,
    /// Large shapes only with count 1.
    pub large: bool,
    /// The slot of each shape (distinct).
    pub positions: Vec<Position>,
}

/// splitmix64: a small, fixed generator so the dataset is the same on every platform and
/// version.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Whether the (colour, shape, background) combination belongs to the held-out split.
pub fn is_held_out(color: usize, shape: Shape, background: usize) -> bool {
    (color + 3 * shape.index() + 5 * background) % 11 == 0
}

impl Scene {
    /// A random scene; `held_out` picks from the held-out combinations or from the others.
    pub fn random(rng: &mut SplitMix64, held_out: bool) -> Scene {
        loop {
            let shape = Shape::ALL[rng.below(4)];
            let color = rng.below(COLORS.len());
            let background = rng.below(COLORS.len());
            if background == color || is_held_out(color, shape, background) != held_out {
                continue;
            }
            let count = 1 + rng.below(3);
            let large = count == 1 && rng.below(2) == 1;
            let mut slots = Position::ALL.to_vec();
            if count > 1 {
                slots.retain(|p| *p != Position::Center);
            }
            let mut positions = Vec::with_capacity(count);
            for _ in 0..count {
                positions.push(slots.remove(rng.below(slots.len())));
            }
            return Scene { shape, color, background, count, large, positions };
        }
    }

    /// The full caption: "a small red circle in the top left on a blue background",
    /// "two yellow triangles on a black background".
    pub fn caption(&self) -> String {
        self.caption_with(true, true)
    }

    /// A caption that names the size and the position (single shapes) only when asked; training
    /// mixes these so short prompts ("a red circle on a blue background") work too.
    pub fn caption_with(&self, size: bool, position: bool) -> String {
        let color = COLORS[self.color].0;
        let bg = COLORS[self.background].0;
        let shape = self.shape.name();
        if self.count == 1 {
            let size = if size { if self.large { "large " } else { "small " } } else { "" };
            let article = if size.is_empty() && matches!(color, "orange") { "an" } else { "a" };
            let place = if position { format!(" in the {}", self.positions[0].name()) } else { String::new() };
            format!("{article} {size}{color} {shape}{place} on a {bg} background")
        } else {
            let n = ["", "", "two", "three"][self.count];
            format!("{n} {color} {shape}s on a {bg} background")
        }
    }

    /// Renders the scene (4×4 supersampling for smooth edges).
    pub fn render(&self, rng: &mut SplitMix64) -> RgbImage {
        let radius = if self.large { 14.0 } else { 8.0 };
        // small jitter of each shape's centre and size
        let shapes: Vec<(f32, f32, f32)> = self
            .positions
            .iter()
            .map(|p| {
                let (x, y) = p.center();
                (x + 4.0 * (rng.unit() - 0.5), y + 4.0 * (rng.unit() - 0.5), radius * (0.9 + 0.2 * rng.unit()))
            })
            .collect();
        let fg = COLORS[self.color].1;
        let bg = COLORS[self.background].1;
        RgbImage::from_fn(SIZE, SIZE, |x, y| {
            let a = coverage(x as usize, y as usize, |px, py| shapes.iter().any(|&(cx, cy, r)| inside(self.shape, px - cx, py - cy, r)));
            Rgb(std::array::from_fn(|c| (fg[c] as f32 * a + bg[c] as f32 * (1.0 - a)).round() as u8))
        })
    }
}

impl Shape {
    /// Area / r² of the shape [`inside`] draws with radius r.
    pub(crate) fn area(self) -> f32 {
        match self {
            Shape::Circle => std::f32::consts::PI,
            Shape::Square => 1.7 * 1.7,
            Shape::Triangle => 2.0,
            // five triangles between the centre, an outer point (r) and an inner one (0.45 r)
            Shape::Star => 10.0 * 0.5 * 0.45 * (std::f32::consts::PI / 5.0).sin(),
        }
    }

    /// How far below the drawing centre the shape's centroid lies, in r (the triangle's is a
    /// third of its height below its middle).
    pub(crate) fn centroid_offset(self) -> f32 {
        if self == Shape::Triangle { 1.0 / 3.0 } else { 0.0 }
    }

    /// Whether pixel (x, y) of a shape drawn around (cx, cy) with radius r is at least half
    /// covered (4×4 supersampling, as [`Scene::render`] draws).
    pub(crate) fn covers(self, x: usize, y: usize, cx: f32, cy: f32, r: f32) -> bool {
        coverage(x, y, |px, py| inside(self, px - cx, py - cy, r)) >= 0.5
    }
}

/// The share of pixel (x, y) covered, from 4×4 samples at which `covered(px, py)` is asked.
fn coverage(x: usize, y: usize, covered: impl Fn(f32, f32) -> bool) -> f32 {
    let mut n = 0u32;
    for sy in 0..4 {
        for sx in 0..4 {
            n += covered(x as f32 + (sx as f32 + 0.5) / 4.0, y as f32 + (sy as f32 + 0.5) / 4.0) as u32;
        }
    }
    n as f32 / 16.0
}

/// Whether the point (dx, dy) from a shape's centre lies inside it (y grows downwards).
pub(crate) fn inside(shape: Shape, dx: f32, dy: f32, r: f32) -> bool {
    match shape {
        Shape::Circle => dx * dx + dy * dy <= r * r,
        Shape::Square => dx.abs() <= r * 0.85 && dy.abs() <= r * 0.85,
        Shape::Triangle => {
            // apex up, base down: height 2r, half base r
            let t = (dy + r) / (2.0 * r);
            (0.0..=1.0).contains(&t) && dx.abs() <= t * r
        }
        Shape::Star => {
            // five points, inner radius 0.45 r, one point up
            let rho = (dx * dx + dy * dy).sqrt();
            if rho > r {
                return false;
            }
            let theta = dy.atan2(dx) + std::f32::consts::FRAC_PI_2;
            let sector = std::f32::consts::TAU / 5.0;
            let a = theta.rem_euclid(sector) - sector / 2.0;
            // the star's edge between an outer point (angle 0 in the sector frame) and an inner
            // one (±sector/2): the line through (r, 0) and (0.45 r, ±36°) in polar form
            let (ox, oy) = (r, 0.0f32);
            let (ix, iy) = (0.45 * r * (sector / 2.0).cos(), 0.45 * r * (sector / 2.0).sin());
            let (px, py) = (rho * a.cos(), rho * a.abs().sin());
            // inside when on the same side of the edge as the centre
            let cross = |ax: f32, ay: f32, bx: f32, by: f32, cx: f32, cy: f32| (bx - ax) * (cy - ay) - (by - ay) * (cx - ax);
            cross(ox, oy, ix, iy, px, py).signum() == cross(ox, oy, ix, iy, 0.0, 0.0).signum()
        }
    }
}

/// `n` (scene, caption, image) samples of one split, deterministic from `seed`.
pub fn samples(seed: u64, n: usize, held_out: bool) -> Vec<(Scene, RgbImage)> {
    let mut rng = SplitMix64(seed);
    (0..n)
        .map(|_| {
            let scene = Scene::random(&mut rng, held_out);
            let image = scene.render(&mut rng);
            (scene, image)
        })
        .collect()
}
