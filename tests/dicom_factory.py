"""A DICOM WSI series written from a tiled JPEG TIFF, with pydicom alone (never through `wsi_ats`).

Each tiled JPEG level of the TIFF becomes one VL Whole Slide Microscopy Image instance
(``TILED_FULL``, JPEG baseline) whose frames are the TIFF's tiles copied byte for byte,
with the TIFF's shared JPEGTables merged into each: no re-encoding, so the series holds
exactly the pixels of its TIFF twin. Stripped pages (an Aperio thumbnail) are left out.

wsidicomizer would do this too, but needs libjpeg-turbo's ``libturbojpeg`` installed on the
system; pydicom is enough for the handful of attributes OpenSlide and wsidicom read.
"""

from __future__ import annotations

from pathlib import Path

import tifffile
from pydicom import Dataset, FileMetaDataset, Sequence
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, VLWholeSlideMicroscopyImageStorage, generate_uid

_YCBCR = 6
#: DICOM's name for each TIFF photometric a JPEG tile may have.
_PHOTOMETRIC = {2: "RGB", _YCBCR: "YBR_FULL_422"}


def jpeg_frames(page: tifffile.TiffPage, data: bytes) -> list[bytes]:
    """The page's tiles as complete JPEG streams: its JPEGTables (between SOI and EOI) spliced after each tile's SOI."""
    tables = (page.jpegtables or b"\xff\xd8\xff\xd9")[2:-2]
    tiles = (data[o : o + n] for o, n in zip(page.dataoffsets, page.databytecounts))
    return [tile[:2] + tables + tile[2:] for tile in tiles]


def write_dicom_series(tiff: Path, folder: Path, *, mpp: float, name: str = "slide") -> Path:
    """Write the tiled JPEG levels of ``tiff`` as ``folder/level-<i>.dcm``; ``mpp`` is level 0's resolution."""
    folder.mkdir(parents=True, exist_ok=True)
    data = tiff.read_bytes()
    with tifffile.TiffFile(tiff) as tf:
        pages = sorted((p for p in tf.pages if p.is_tiled and p.compression == 7), key=lambda p: -p.imagewidth)
        study, series, frame_of_reference = (generate_uid(entropy_srcs=[name, part]) for part in ("study", "series", "for"))
        width0 = pages[0].imagewidth
        for i, page in enumerate(pages):
            frames = jpeg_frames(page, data)
            spacing_mm = mpp * width0 / page.imagewidth / 1000
            ds = _instance(page, i, spacing_mm, study, series, frame_of_reference, name)
            ds.NumberOfFrames = len(frames)
            ds.PixelData = encapsulate(frames, has_bot=True)
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True
            ds.save_as(folder / f"level-{i}.dcm", enforce_file_format=True)
    return folder


def _instance(
    page: tifffile.TiffPage, index: int, spacing_mm: float, study: str, series: str, frame_of_reference: str, name: str
) -> Dataset:
    instance = generate_uid(entropy_srcs=[name, "level", str(index)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = VLWholeSlideMicroscopyImageStorage
    meta.MediaStorageSOPInstanceUID = instance
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = VLWholeSlideMicroscopyImageStorage, instance
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
    ds.Modality, ds.Manufacturer, ds.PatientName, ds.PatientID = "SM", "wsi-ats tests", name, name
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber, ds.AccessionNumber = "1", 1, index + 1, ""
    ds.StudyDate, ds.StudyTime, ds.ContentDate, ds.ContentTime = "20240101", "000000", "20240101", "000000"
    ds.ReferringPhysicianName, ds.PatientBirthDate, ds.PatientSex = "", "", ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.BurnedInAnnotation, ds.SpecimenLabelInImage, ds.FocusMethod, ds.ExtendedDepthOfField = "NO", "NO", "AUTO", "NO"
    ds.ContainerIdentifier = name
    ds.IssuerOfTheContainerIdentifierSequence, ds.ContainerTypeCodeSequence = Sequence(), Sequence()
    ds.SpecimenDescriptionSequence = Sequence([_specimen(name)])
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, _PHOTOMETRIC[page.photometric], 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.LossyImageCompression, ds.LossyImageCompressionMethod, ds.LossyImageCompressionRatio = "01", "ISO_10918_1", 10
    ds.Rows, ds.Columns = page.tilelength, page.tilewidth
    ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns = page.imagelength, page.imagewidth
    ds.TotalPixelMatrixFocalPlanes, ds.NumberOfOpticalPaths = 1, 1
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem, origin.YOffsetInSlideCoordinateSystem = 0, 0
    ds.TotalPixelMatrixOriginSequence = Sequence([origin])
    ds.ImagedVolumeWidth = page.imagewidth * spacing_mm
    ds.ImagedVolumeHeight = page.imagelength * spacing_mm
    ds.ImagedVolumeDepth = 0.001
    measures = Dataset()
    measures.PixelSpacing = [spacing_mm, spacing_mm]  # row spacing, column spacing (mm)
    measures.SliceThickness, measures.SpacingBetweenSlices = 0.001, 0.001
    frame_type = Dataset()
    frame_type.FrameType = ds.ImageType
    shared = Dataset()
    shared.PixelMeasuresSequence, shared.WholeSlideMicroscopyImageFrameTypeSequence = Sequence([measures]), Sequence([frame_type])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.OpticalPathSequence = Sequence([_optical_path()])
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return code


def _optical_path() -> Dataset:
    path = Dataset()
    path.OpticalPathIdentifier = "0"
    path.IlluminationTypeCodeSequence = Sequence([_code("111744", "DCM", "Brightfield illumination")])
    path.IlluminationColorCodeSequence = Sequence([_code("414298005", "SCT", "Full Spectrum")])
    path.ObjectiveLensPower = 40
    return path


def _specimen(name: str) -> Dataset:
    specimen = Dataset()
    specimen.SpecimenIdentifier, specimen.SpecimenUID = name, generate_uid(entropy_srcs=[name, "specimen"])
    specimen.IssuerOfTheSpecimenIdentifierSequence, specimen.SpecimenPreparationSequence = Sequence(), Sequence()
    return specimen
