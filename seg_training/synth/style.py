"""
The looks of seg-synth's two domains and its weathers: cameras, colours of the world, lenses.

The ``source`` domain imitates Cityscapes: a camera about 1.2 m high behind the windscreen with
the bonnet in view, long focal length, clean optics, fair weather, light pavements and pale
facades. The ``target`` domain is another team's car: a roof camera about 2 m high pitched down,
a wide lens with vignetting and noise, darker asphalt with yellow centre lines, brick and concrete
facades, olive vegetation, and overcast, foggy, dusk or rainy weather. Models trained on one
and run on the other meet a real domain gap.
"""

from dataclasses import dataclass
from typing import Dict, Tuple

Color = Tuple[int, int, int]
Range = Tuple[float, float]
Palette = Tuple[Color, ...]

DOMAINS = ('source', 'target')
VIEWS = ('front', 'rear')


@dataclass(frozen=True)
class Weather:
    """Light and atmosphere of one kind of weather."""

    name: str
    sun: float                 # strength of direct sunlight (0 = no shadows)
    ambient: float             # light on faces the sun does not reach
    clouds: float              # cloud cover 0..1
    sky_zenith: Color
    sky_horizon: Color
    cloud_color: Color
    gain: float                # overall exposure
    tint: Tuple[float, float, float]
    visibility: float          # metres at which fog hides 63 % of a colour (0 = domain haze)
    fog_color: Color
    rain: float                # rain streak strength 0..1
    wet: bool                  # darker, glossier road
    lit_windows: float         # fraction of windows lit from inside


WEATHERS: Dict[str, Weather] = {w.name: w for w in (
    Weather('clear', 0.75, 0.55, 0.15, (62, 118, 196), (168, 198, 232), (240, 242, 246),
            1.0, (1.0, 1.0, 1.0), 0.0, (200, 210, 225), 0.0, False, 0.0),
    Weather('cloudy', 0.55, 0.65, 0.55, (96, 132, 186), (186, 204, 226), (232, 234, 238),
            0.97, (1.0, 1.0, 1.0), 0.0, (200, 208, 220), 0.0, False, 0.0),
    Weather('overcast', 0.0, 0.95, 0.9, (150, 156, 166), (206, 210, 214), (188, 192, 198),
            0.9, (0.98, 1.0, 1.02), 0.0, (196, 200, 204), 0.0, False, 0.02),
    Weather('fog', 0.0, 0.95, 0.95, (176, 180, 184), (198, 200, 202), (190, 192, 194),
            0.92, (1.0, 1.0, 1.0), 70.0, (186, 188, 190), 0.0, False, 0.05),
    Weather('dusk', 0.15, 0.6, 0.45, (58, 62, 112), (236, 150, 96), (196, 120, 110),
            0.6, (1.1, 0.92, 0.82), 0.0, (150, 120, 120), 0.0, False, 0.35),
    Weather('rain', 0.0, 0.9, 1.0, (104, 110, 120), (150, 156, 164), (120, 124, 130),
            0.72, (0.95, 0.98, 1.04), 180.0, (130, 135, 142), 0.8, True, 0.15),
)}


@dataclass(frozen=True)
class DomainStyle:
    """Everything that makes one domain look like itself; drives sample their look from it."""

    name: str
    camera_height: Range       # metres above the road
    pitch_deg: Range           # downwards
    focal: Range               # focal length in image widths
    horizon: Range             # horizon row as a fraction of the image height
    roll_deg: float            # largest camera roll either way
    bonnet: bool               # the ego vehicle's bonnet at the bottom of the front view
    weather: Tuple[Tuple[str, float], ...]
    haze_m: Range              # atmospheric visibility in fair weather
    asphalt: Palette
    pavement: Palette
    kerb: Palette
    terrain: Palette
    facades: Palette
    glass: Palette
    foliage: Palette
    bark: Palette
    paints: Palette
    lane_white: Color
    center_line: Color
    noise: Range               # sensor noise sigma in grey levels
    vignette: Range            # brightness lost in the corners
    blur: Range                # lens blur sigma in pixels
    saturation: Range
    texture: float             # strength of surface textures
    park_rate: float           # chance a roadside stretch is a park rather than a block
    street_tree_rate: float
    pedestrian_rate: float     # pedestrians per 100 m of sidewalk and direction
    traffic_gap: Range         # metres between cars in a lane


SOURCE = DomainStyle(
    name='source',
    camera_height=(1.15, 1.4), pitch_deg=(0.0, 2.0), focal=(1.0, 1.15), horizon=(0.40, 0.46),
    roll_deg=0.6, bonnet=True,
    weather=(('clear', 0.5), ('cloudy', 0.38), ('overcast', 0.12)),
    haze_m=(500.0, 900.0),
    asphalt=((92, 92, 96), (102, 100, 104), (84, 86, 90), (110, 108, 108)),
    pavement=((156, 150, 144), (168, 162, 154), (140, 136, 134), (160, 126, 116)),
    kerb=((176, 174, 170), (150, 150, 150)),
    terrain=((112, 138, 64), (132, 146, 82), (120, 128, 70)),
    facades=((206, 196, 174), (224, 214, 194), (182, 178, 172), (214, 202, 150),
             (204, 164, 144), (170, 172, 178), (196, 186, 164), (230, 226, 220)),
    glass=((58, 68, 82), (84, 96, 112), (42, 50, 60), (110, 124, 140)),
    foliage=((72, 104, 42), (92, 124, 52), (60, 88, 36), (108, 132, 62)),
    bark=((86, 72, 60), (100, 92, 84)),
    paints=((235, 235, 235), (30, 30, 32), (150, 152, 156), (96, 98, 104), (30, 52, 110),
            (150, 24, 28), (20, 70, 60), (190, 180, 160), (60, 90, 150)),
    lane_white=(224, 224, 220), center_line=(224, 224, 220),
    noise=(1.0, 2.5), vignette=(0.0, 0.1), blur=(0.45, 0.65), saturation=(0.95, 1.1),
    texture=1.0, park_rate=0.25, street_tree_rate=0.45, pedestrian_rate=3.5,
    traffic_gap=(18.0, 60.0),
)

TARGET = DomainStyle(
    name='target',
    camera_height=(1.75, 2.2), pitch_deg=(4.0, 7.5), focal=(0.7, 0.85), horizon=(0.30, 0.37),
    roll_deg=2.0, bonnet=False,
    weather=(('overcast', 0.3), ('fog', 0.25), ('dusk', 0.2), ('rain', 0.25)),
    haze_m=(250.0, 450.0),
    asphalt=((46, 46, 52), (56, 54, 58), (40, 42, 44), (62, 60, 66)),
    pavement=((118, 116, 110), (128, 94, 84), (104, 104, 100), (136, 124, 104)),
    kerb=((132, 130, 124), (96, 96, 94)),
    terrain=((136, 126, 86), (110, 112, 70), (150, 136, 96)),
    facades=((142, 72, 56), (104, 78, 62), (120, 120, 126), (186, 186, 180), (178, 100, 70),
             (90, 100, 116), (160, 150, 128), (130, 60, 48)),
    glass=((30, 34, 40), (52, 58, 62), (70, 72, 68)),
    foliage=((52, 66, 36), (84, 90, 46), (42, 60, 40), (96, 96, 54)),
    bark=((62, 54, 48), (80, 72, 62)),
    paints=((210, 210, 206), (24, 24, 26), (120, 122, 124), (150, 120, 40), (90, 30, 30),
            (60, 70, 50), (170, 168, 160), (40, 60, 90)),
    lane_white=(196, 196, 188), center_line=(206, 170, 62),
    noise=(4.0, 8.0), vignette=(0.25, 0.45), blur=(0.7, 1.1), saturation=(0.7, 0.88),
    texture=1.3, park_rate=0.35, street_tree_rate=0.3, pedestrian_rate=2.5,
    traffic_gap=(14.0, 45.0),
)

STYLES: Dict[str, DomainStyle] = {'source': SOURCE, 'target': TARGET}


def domain_style(name: str) -> DomainStyle:
    """Look up the style of domain ``name`` ('source' or 'target'); ValueError if unknown."""
    try:
        return STYLES[name]
    except KeyError:
        raise ValueError(f'unknown domain {name!r}; choose one of {list(DOMAINS)}') from None
