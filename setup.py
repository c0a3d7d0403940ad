"""ament_python package: works with `colcon build` in a ROS 2 workspace and `pip install -e .`."""

from glob import glob
import os

from setuptools import find_packages, setup

package_name = 'seg_perception'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(include=['seg_perception', 'seg_perception.*',
                                    'seg_training', 'seg_training.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        (os.path.join('share', package_name, 'launch'), glob('launch/*.launch.py')),
        (os.path.join('share', package_name, 'config'),
         glob('config/*.yaml') + glob('config/*.rviz') + glob('config/*.xml')),
        (os.path.join('share', package_name, 'config', 'class_maps'),
         glob('config/class_maps/*.yaml')),
        # the bundled default model (seg_perception.resources.default_model_path)
        (os.path.join('share', package_name, 'models'), glob('models/*.pt')),
        # real frames with hand labels (CamVid, CC BY-NC 4.0): the demo's real-frame sheet
        (os.path.join('share', package_name, 'samples', 'camvid'), ['samples/camvid/README.md']),
        (os.path.join('share', package_name, 'samples', 'camvid', 'test'),
         glob('samples/camvid/test/*.png')),
        (os.path.join('share', package_name, 'samples', 'camvid', 'testannot'),
         glob('samples/camvid/testannot/*.png')),
    ],
    # Runtime Python dependencies that are not ROS packages; torch is installed beforehand
    # (CPU or CUDA build of the user's choice) and is only checked here.
    install_requires=['setuptools', 'numpy', 'pyyaml', 'opencv-python-headless', 'pillow',
                      'tqdm', 'torch>=2.1'],
    zip_safe=True,
    maintainer='seg_perception developers',
    maintainer_email='dev@seg-perception.invalid',
    description='Real-time ERFNet semantic segmentation for ROS 2, and its training package.',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            'segmentation_node = seg_perception.node:main',
            'seg-predict = seg_perception.predict:main',
            'seg-bag = seg_perception.bag:main',
            'seg-replay = seg_perception.replay:main',
            'seg-synth = seg_training.synth:main',
            'seg-train = seg_training.training.loop:main',
            'seg-eval = seg_training.evaluation.seg_eval:main',
            'seg-export = seg_training.export:main',
        ],
    },
)
